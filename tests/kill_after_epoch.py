"""Fault injection for the resume test: `python kill_after_epoch.py N headstart-args...` runs the CLI with a
callback that kills the process (SIGKILL, no cleanup) right after the checkpoint of training epoch N."""

from __future__ import annotations

import os
import signal
import sys

from headstart.train.callbacks import Callback


class KillAfterEpoch(Callback):
    """Added after the Trainer's own callbacks, so the epoch's checkpoint is already written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def after_epoch(self, trainer) -> None:  # type: ignore[no-untyped-def]
        if trainer.pos.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    import headstart.train.loop as loop
    from headstart.cli import main as cli

    epoch = int(sys.argv[1])
    init = loop.Trainer.__init__

    def with_kill(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        self.callbacks.append(KillAfterEpoch(epoch))

    loop.Trainer.__init__ = with_kill  # type: ignore[method-assign]
    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
