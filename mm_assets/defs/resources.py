"""Resources that turn settings into the core's inputs: where batches live, how files are built."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mm_assets.core.batch_work import BatchWork, WorkRoots
from mm_assets.core.build_settings import BuildSettings, parse_column_map, parse_size
from mm_assets.core.quota import GB, MAX_FILE_BYTES
from mm_assets.core.snapshot_diff import SnapshotOptions, parse_share
from mm_assets.defs.settings import SAMPLE_EXPORT_DIR, STATE_DIR, env_settings, is_true


class BatchStorage(dg.ConfigurableResource):
    """The local export folder (one sub-folder per batch), the work area and the outbox."""

    export_dir: str = str(SAMPLE_EXPORT_DIR)
    work_dir: str = str(STATE_DIR / "work")
    outbox_dir: str = str(STATE_DIR / "outbox")

    def roots(self) -> WorkRoots:
        return WorkRoots(
            export=Path(self.export_dir), work=Path(self.work_dir), outbox=Path(self.outbox_dir)
        )

    def work_for(self, batch: str) -> BatchWork:
        """Every folder and file of the batch's build (the steps hand each other these)."""
        return self.roots().batch(batch)

    # Shortcuts for the source and delivery steps, which need one folder of the batch.
    def batch_dir(self, batch: str) -> Path:
        return self.work_for(batch).export

    def outbox(self, batch: str) -> Path:
        return self.work_for(batch).outbox

    def list_batches(self) -> list[str]:
        root = Path(self.export_dir)
        if not root.is_dir():
            return []
        return sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
        )


class S2sFileSettings(dg.ConfigurableResource):
    """How S2S files are written for this partner (S2S-HDR, S2S-NAME, S2S-SEG, S2S-QUOTA)."""

    partner_name: str
    segment_namespace: str
    user_namespace: str = "mm"
    user_table_id: str = ""
    hashed_taxonomies: str = ""  # comma-separated agency names; "@global" for the global file
    hash_ids: str = "false"  # "true" only with MediaMath's permission (S2S-HDR HashIDs)
    max_file_bytes: str = f"{MAX_FILE_BYTES // GB}GB"  # S2S-QUOTA
    memory_budget: str = "1GiB"
    column_map: str = ""  # e.g. "user_id=uid,segment=seg_code"
    gzip_level: str = "4"
    # "true": a batch with an unreadable file is built anyway (batch_is_complete only warns)
    accept_partial_batches: str = "false"
    # README "Delta and snapshot modes": "snapshot" diffs each full-audience batch against the
    # held state (mm_assets/core/snapshot_diff.py) instead of sending its loads as they are.
    export_mode: str = "delta"
    snapshot_state_dir: str = ""  # "" -> the state folder's audience_state/
    snapshot_removal_threshold: str = "20%"  # of a family's held members; more blocks
    snapshot_resend_days: str = "0"  # re-send unchanged members every N days; 0 never
    snapshot_seed_batch: str = ""  # this batch seeds an empty state, sending nothing

    def accepts_partial_batches(self) -> bool:
        return is_true(self.accept_partial_batches)

    def snapshot_options(self) -> SnapshotOptions | None:
        """Snapshot mode's options, or None in delta mode (today's behaviour)."""
        mode = self.export_mode.strip().lower()
        if mode not in ("delta", "snapshot"):
            raise ValueError(f"MM_EXPORT_MODE is {self.export_mode!r}: expected delta or snapshot")
        if mode == "delta":
            return None
        return SnapshotOptions(
            state_dir=Path(self.snapshot_state_dir or STATE_DIR / "audience_state"),
            removal_threshold=parse_share(self.snapshot_removal_threshold),
            resend_after_seconds=int(float(self.snapshot_resend_days) * 86400),
            seed_batch=self.snapshot_seed_batch.strip(),
        )

    def build_settings(self) -> BuildSettings:
        return BuildSettings(
            partner_name=self.partner_name,
            segment_namespace=self.segment_namespace,
            user_namespace=self.user_namespace,
            user_table_id=self.user_table_id or None,
            hashed_taxonomies=frozenset(
                t.strip() for t in self.hashed_taxonomies.split(",") if t.strip()
            ),
            hash_ids=is_true(self.hash_ids),
            max_file_bytes=parse_size(self.max_file_bytes),
            memory_budget_bytes=parse_size(self.memory_budget),
            column_map=parse_column_map(self.column_map),
            gzip_level=int(self.gzip_level),
        )


def default_batch_storage(export_dir: str | None = None) -> BatchStorage:
    found = env_settings(
        BatchStorage,
        export_dir="MM_ASSETS_EXPORT_DIR",
        work_dir="MM_ASSETS_WORK_DIR",
        outbox_dir="MM_ASSETS_OUTBOX_DIR",
    )
    if export_dir:
        found["export_dir"] = export_dir
    return BatchStorage(**found)


# The embedded defaults of the sample export in data/ (its hashed taxonomy included).
SAMPLE_PARTNER = {
    "partner_name": "ExamplePartner",
    "segment_namespace": "ep",
    "hashed_taxonomies": "SportsDaily",
}


def default_s2s_file_settings() -> S2sFileSettings:
    found = env_settings(
        S2sFileSettings,
        partner_name="MM_PARTNER_NAME",
        segment_namespace="MM_SEGMENT_NAMESPACE",
        user_namespace="MM_USER_NAMESPACE",
        user_table_id="MM_USER_TABLE_ID",
        hashed_taxonomies="MM_HASHED_TAXONOMIES",
        hash_ids="MM_HASH_IDS",
        max_file_bytes="MM_MAX_FILE_BYTES",
        memory_budget="MM_ASSETS_MEMORY_BUDGET",
        column_map="MM_ASSETS_COLUMN_MAP",
        gzip_level="MM_ASSETS_GZIP_LEVEL",
        accept_partial_batches="MM_ACCEPT_PARTIAL_BATCHES",
        export_mode="MM_EXPORT_MODE",
        snapshot_state_dir="MM_SNAPSHOT_STATE_DIR",
        snapshot_removal_threshold="MM_SNAPSHOT_REMOVAL_THRESHOLD",
        snapshot_resend_days="MM_SNAPSHOT_RESEND_DAYS",
        snapshot_seed_batch="MM_SNAPSHOT_SEED_BATCH",
    )
    return S2sFileSettings(**{**SAMPLE_PARTNER, **found})
