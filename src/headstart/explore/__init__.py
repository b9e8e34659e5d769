"""What a pretrained backbone's embeddings are worth beyond one classifier: export and search them
(`index`), group them and find suspect labels (`clusters`), pick what to label next (`suggest`), check
whether the backbone already saw the data (`overlap`). Every verb here starts from `embedded.embed_dataset`:
one read of the data, one cached pass of the backbone."""
