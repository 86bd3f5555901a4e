"""Text from users and handlers shows as written in the CLI's tables: "[unsafe]" in an error
message is not rich markup (it vanished before)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from taskd.cli.status import render_errors
from taskd.queue.status import ErrorRow


def test_an_error_message_with_brackets_shows_as_written() -> None:
    now = datetime.now(UTC)
    message = "content audit rejected image x.png: the prompt contains the marker '[unsafe]'"
    row = ErrorRow(error_type="ContentRejected", message=message, count=1, queue="images",
                   kind="model_pose12", first_occurred_at=now, last_occurred_at=now)
    console = Console(record=True, width=400, color_system=None)
    console.print(render_errors([row], "errors"))
    assert message in console.export_text()
