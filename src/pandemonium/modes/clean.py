"""``pandemonium clean``: remove temporary files and intermediates of project ``proj``.

Removed: ``<proj>/TMP``, all but the newest ``mode.keep_checkpoints`` files per task of every
intermediate artifact key (``patch_checkpoints``), half-built tasks (``<data_dir>/tasks/.tmp-*``)
and leftover ``*.tmp`` state files of runs. Never touched: models, patches, reports and every other
result key. Without ``mode.force=true`` nothing is deleted, the candidates are listed.
``run()`` returns ``{"removed": [...], "would_remove": [...]}``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pandemonium.runs.base import AbstractBaseScheduler
from pandemonium.runs.file_manager import INTERMEDIATE_KEYS, PROTECTED_KEYS, RUNS_DIR_NAME

log = logging.getLogger(__name__)


class CleanScheduler(AbstractBaseScheduler):
    requires_existing_tasks = False

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["clean"])
        self.force = bool(cfg.mode.get("force", False))
        self.keep = max(0, int(cfg.mode.get("keep_checkpoints", 1)))

    def create_routine(self) -> None:
        if "clean" in self.subroutines:
            self.commands.append(self.clean)
            self.params.append([])

    def candidates(self) -> list[Path]:
        """Everything ``clean`` would remove, protected results excluded."""
        found: list[Path] = []
        if self.fm.tmp_path.exists():
            found.append(self.fm.tmp_path)
        for key in sorted(INTERMEDIATE_KEYS - PROTECTED_KEYS):
            by_folder: dict[Path, list[Path]] = {}
            for path in self.fm.list_artifacts(key, task_name="*") + self.fm.list_artifacts(key):
                by_folder.setdefault(path.parent, []).append(path)
            for files in by_folder.values():
                files = sorted(set(files), key=lambda p: (p.stat().st_mtime, p.name))
                found.extend(files[: max(0, len(files) - self.keep)])
        tasks_root = Path(self.cfg.data_dir) / "tasks"
        if tasks_root.is_dir():
            found.extend(sorted(p for p in tasks_root.glob(".tmp-*") if p.is_dir()))
        runs = self.proj_path / RUNS_DIR_NAME
        if runs.is_dir():
            found.extend(sorted(p for p in runs.glob("*/*.tmp") if p.is_file()))
        protected = [self._key_root(k) for k in PROTECTED_KEYS]
        return [p for p in found if not any(root in p.parents or root == p for root in protected)]

    def _key_root(self, key: str) -> Path:
        # the part of a key's template before any placeholder other than proj_path
        template = self.fm.template_for(key).replace("{proj_path}", str(self.proj_path))
        return Path(template.split("{", 1)[0])

    def clean(self) -> dict[str, list[str]]:
        targets = self.candidates()
        if not self.force:
            for path in targets:
                log.info("would remove %s", path)
            log.info("clean: %d item(s) would be removed; run with mode.force=true to remove them", len(targets))
            return {"removed": [], "would_remove": [str(p) for p in targets]}
        removed = []
        for path in targets:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path))
            log.info("removed %s", path)
        log.info("clean: removed %d item(s)", len(removed))
        return {"removed": removed, "would_remove": []}

    def finish(self) -> Any:
        return self.last_result
