"""What operators ask of the ingest side: the documents by status, what is in flight, what failed
(`docent queue` puts it beside the queues and the chat side's figures, services/operations.py)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.ingest import states


@dataclass(frozen=True)
class DocumentsReport:
    summary: str
    details: list[str]


async def documents_report(conn: asyncpg.Connection) -> DocumentsReport:
    by_status = await states.count_by_status(conn)
    processing = await states.processing_now(conn, 20)
    failed = await states.recently_failed(conn, 10)
    details: list[str] = []
    if processing:
        details.append("")
        details.append("processing:")
        for row in processing:
            details.append(f"  {row['id']}  {row['filename']}  {row['stage']} pages {row['pages_done']}/"
                           f"{row['pages_total']} chunks {row['chunks_done']}/{row['chunks_total']}  "
                           f"attempt {row['attempts']}, lease {row['lease_left']} s")
    if failed:
        details.append("")
        details.append("recently failed:")
        for row in failed:
            reason = f" ({row['error_reason']})" if row["error_reason"] else ""
            details.append(f"  {row['id']}  {row['updated_at']:%Y-%m-%d %H:%M}  {row['filename']}: "
                           f"{row['error']}{reason}")
    summary = "documents   " + "  ".join(f"{status}={total}" for status, total in by_status.items())
    return DocumentsReport(summary, details)
