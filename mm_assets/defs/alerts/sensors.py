"""One alerting path: Dagster sensors post to the `MM_ALERT_WEBHOOK_URL` webhook when a person
is needed.

* `alert_on_failed_checks` reads new asset-check evaluations (cursor: the event log's storage
  id) and posts each failed one of ERROR severity: a file MediaMath rejected or never answered
  (`every_file_accepted_by_mediamath`), a file failed, refused, not approved or needing
  attention (`every_file_has_a_receipt`), a build that broke a rule (the build checks).
* `alert_on_run_failure` posts every failed run of this code location.

Both are on by default: with no webhook set they only skip. Alert texts are built from check
descriptions and run failure messages, which never hold a secret (the project's invariant 4);
the URL itself is never shown.
"""

from __future__ import annotations

import json

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from mm_assets.clients.alert_webhook import AlertNotSent, post_alert
from mm_assets.defs.settings import setting

ALERTS_PER_TICK = 20  # with the webhook's 5 s timeout, well inside a sensor tick
# Counts worth a glance in the alert, when the check's metadata has them.
_COUNTS = (
    "files_rejected",
    "files_timed_out",
    "files_needs_attention",
    "files_failed",
    "files_not_approved",
    "without_receipt",
    "violations",
)


class AlertWebhook(dg.ConfigurableResource):
    """A Slack-compatible incoming webhook (`{"text": ...}`); empty = alerts off."""

    url: str = ""
    timeout_seconds: float = 5.0

    def post(self, text: str) -> None:
        post_alert(self.url, text, timeout=self.timeout_seconds)


def default_alert_webhook() -> AlertWebhook:
    return AlertWebhook(url=setting("MM_ALERT_WEBHOOK_URL", ""))


def check_alert_text(evaluation: dg.AssetCheckEvaluation) -> str:
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    counts = ", ".join(
        f"{k}={meta[k] if not isinstance(meta[k], list) else len(meta[k])}"
        for k in _COUNTS
        if meta.get(k)
    )
    where = f"batch {evaluation.partition}" if evaluation.partition else "no batch"
    text = (
        f"mm-assets: check {evaluation.check_name} on {evaluation.asset_key.to_user_string()} "
        f"failed for {where}"
    )
    if counts:
        text += f" ({counts})"
    if evaluation.description:
        text += f": {evaluation.description}"
    return text


def _watched_checks() -> list[dg.AssetCheckKey]:
    # Imported here: the check modules import resources this module must not depend on first.
    from mm_assets.defs.delivery.assets import every_file_has_a_receipt
    from mm_assets.defs.processing_log.checks import every_file_accepted_by_mediamath
    from mm_assets.defs.s2s_build.checks import files_conform_to_s2s_spec, outbox_matches_manifest

    checks = (
        files_conform_to_s2s_spec,
        outbox_matches_manifest,
        every_file_has_a_receipt,
        every_file_accepted_by_mediamath,
    )
    return [key for check in checks for key in check.check_keys]


@dg.sensor(
    name="alert_on_failed_checks",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts every failed ERROR check (rejected, timed out, needing attention, not "
    "approved) to MM_ALERT_WEBHOOK_URL.",
)
def alert_on_failed_checks(
    context: dg.SensorEvaluationContext, alerts: AlertWebhook
) -> dg.SkipReason:
    """Cursor: {check key: id of the newest failed execution already handled}."""
    if not alerts.url:
        return dg.SkipReason("MM_ALERT_WEBHOOK_URL is not set")
    seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    storage = context.instance.event_log_storage
    sent = 0
    try:
        for key in _watched_checks():
            name = key.to_user_string()
            history = storage.get_asset_check_execution_history(
                key, limit=ALERTS_PER_TICK, status={AssetCheckExecutionRecordStatus.FAILED}
            )
            for record in sorted(history, key=lambda r: r.id):
                if record.id <= seen.get(name, 0) or record.event is None:
                    continue
                evaluation = record.event.dagster_event.event_specific_data
                if evaluation.severity is dg.AssetCheckSeverity.ERROR:
                    alerts.post(check_alert_text(evaluation))
                    sent += 1
                seen[name] = record.id
    except AlertNotSent as exc:
        # The cursor stays before the failed post: the next tick tries it again.
        return dg.SkipReason(f"{exc}; {sent} alert(s) sent, retrying next tick")
    finally:
        context.update_cursor(json.dumps(seen, sort_keys=True))
    return dg.SkipReason(f"{sent} alert(s) sent")


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts every failed run to MM_ALERT_WEBHOOK_URL.",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, alerts: AlertWebhook) -> None:
    if not alerts.url:
        return
    run = context.dagster_run
    partition = run.tags.get("dagster/partition")
    text = f"mm-assets: run {run.run_id} of {run.job_name}"
    if partition:
        text += f" (batch {partition})"
    alerts.post(f"{text} failed: {context.failure_event.message}")


@dg.sensor(
    name="fail_runs_of_dead_commands",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails the runs an `mm-assets build` / `deliver` ran in its own process when "
    "that process died (kill -9): they would otherwise stay STARTED and hold their batch.",
)
def fail_runs_of_dead_commands(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    from mm_assets.defs.launch import fail_runs_of_dead_commands as fail_dead

    failed = fail_dead(context.instance)
    return dg.SkipReason(f"{len(failed)} run(s) of dead commands failed: {', '.join(failed)}")
