"""One module per section of the report; each has `section(files) -> (body, computed)` (hero: `hero`)."""
