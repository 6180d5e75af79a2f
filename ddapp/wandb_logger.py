"""The wandb logger ``conf/logger/wandb.yaml`` builds: Lightning's, with wandb's own waits for a
server bounded (``ddapp.result_logging`` decides before any work whether the server is reachable
at all). Its own module: importing it imports Lightning, which the resolvers' module must not."""

from __future__ import annotations

import logging

from lightning.pytorch import loggers

from ddapp.result_logging import FINISH_TIMEOUT_S, INIT_TIMEOUT_S, offline_line

log = logging.getLogger(__name__)


class WandbLogger(loggers.WandbLogger):
    """Lightning's ``WandbLogger`` (``conf/logger/wandb.yaml``) with wandb's waits bounded: an
    online run starts as the logger is made, within ``INIT_TIMEOUT_S``; one that does not (a
    server that accepts connections but does not answer, no API key) is logged offline instead,
    with one line. Uploads at the end wait ``FINISH_TIMEOUT_S`` at most (``wandb sync`` later)."""

    def __init__(self, **kwargs):
        import wandb

        settings = {"init_timeout": INIT_TIMEOUT_S, "finish_timeout": FINISH_TIMEOUT_S}
        kwargs.setdefault("settings", wandb.Settings(**settings))
        super().__init__(**kwargs)
        if self._wandb_init.get("mode") == "online":
            self.start_or_go_offline()

    def start_or_go_offline(self) -> None:
        try:
            _ = self.experiment
        except Exception as exc:  # noqa: BLE001  (wandb's CommError, UsageError, TimeoutError...)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning(offline_line(f"the online run did not start ({reason})", self._save_dir))
            self._experiment = None
            self._wandb_init["mode"] = "offline"
