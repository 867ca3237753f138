"""The ERP's dispatch list as a CSV file, as ERP exports and Excel write it, into planned operations.

- Encoding: UTF-8 unless the request declares another (`Content-Type: text/csv; charset=windows-1252`);
  a byte order mark is dropped. Bytes that are not in the encoding are refused naming the line, the
  byte in it and the byte's value, with how to send the file instead: nothing is guessed.
- Lines end in LF, CR LF or a bare CR (Excel for Mac).
- A header row of the columns (services/context/commands.py CSV_COLUMNS); empty cells are left out.
- Every problem names its line and column (all of them, up to `MAX_PROBLEMS`); a list with more
  operations than `max_rows` is 413.
"""

from __future__ import annotations

import codecs
import csv
import email.message
import io
import re

from pydantic import ValidationError

from services.api.errors import ApiError, Problem, validation_problems
from services.context.commands import CSV_COLUMNS, PlannedOperation

REQUIRED = ("job", "operation", "machine", "program", "quantity")
MAX_PROBLEMS = 20
_LINE_END = re.compile(r"\r\n|\r|\n")
_CONTEXT = "dispatch CSV"
_CHARSET_HINT = "e.g. Content-Type: text/csv; charset=windows-1252"


def _line_of(text: str) -> int:
    """The line (from 1) that the end of `text` is on."""
    return len(_LINE_END.findall(text)) + 1


def _refuse(status: int, line: int | None, msg: str, kind: str, column: str | None = None) -> ApiError:
    loc: list[str | int] = ["body"]
    where = _CONTEXT
    if line is not None:
        loc.append(f"line {line}")
        where += f", line {line}"
    if column is not None:
        loc.append(column)
    return ApiError(status, f"{where}: {msg}", problems=[Problem(loc=loc, msg=msg, type=kind)])


def decode(raw: bytes, content_type: str | None) -> str:
    """The file's text: in its declared charset, UTF-8 by default; without a byte order mark."""
    declared = None
    if content_type:
        message = email.message.Message()
        message["content-type"] = content_type
        declared = message.get_content_charset()
    charset = declared or "utf-8"
    try:
        codecs.lookup(charset)
        text = raw.decode(charset)
    except LookupError as exc:
        msg = f"charset {charset!r} is not one this API knows; send UTF-8 or a known one ({_CHARSET_HINT})"
        raise ApiError(415, f"{_CONTEXT}: {msg}", ["header", "Content-Type"]) from exc
    except UnicodeDecodeError as exc:
        line = _line_of(raw[: exc.start].decode(charset, errors="replace"))
        line_start = max(raw.rfind(b"\n", 0, exc.start), raw.rfind(b"\r", 0, exc.start)) + 1
        column = exc.start - line_start + 1
        bad = raw[exc.start : exc.end].hex(" ")
        if declared is None:
            msg = (
                f"0x{bad} is not UTF-8: save the file as UTF-8 (Excel: CSV UTF-8), or declare the"
                f" charset it is in ({_CHARSET_HINT})"
            )
        else:
            msg = f"0x{bad} is not {charset}, the charset the request declares"
        problem = Problem(loc=["body", f"line {line}"], msg=f"byte {column}: {msg}", type="unicode_decode")
        raise ApiError(422, f"{_CONTEXT}, line {line}, byte {column}: {msg}", problems=[problem]) from exc
    return text.removeprefix("\ufeff")


def operations(text: str, max_rows: int) -> list[PlannedOperation]:
    """The planned operations of a dispatch CSV; ApiError (422, 413) names every line and column."""
    if "\x00" in text:
        raise _refuse(422, _line_of(text[: text.index("\x00")]), "contains a NUL character", "nul")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if row:  # blank lines are skipped
                rows.append((reader.line_num, row))
    except csv.Error as exc:
        why = "a quoted cell is not closed" if "unexpected end of data" in str(exc) else str(exc)
        raise _refuse(422, reader.line_num, f"not CSV: {why}", "csv") from exc
    if not rows:
        raise _refuse(422, 1, f"missing columns {', '.join(REQUIRED)} (the file is empty)", "missing")
    (_, header), body = rows[0], rows[1:]
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    twice = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or twice:
        wrong = (
            ([f"missing columns {', '.join(missing)}"] if missing else [])
            + ([f"unknown columns {', '.join(unknown)}"] if unknown else [])
            + ([f"columns given twice: {', '.join(twice)}"] if twice else [])
        )
        raise _refuse(422, rows[0][0], "; ".join(wrong), "columns")
    if len(body) > max_rows:
        raise _refuse(
            413,
            None,
            f"the list has {len(body)} operations; at most {max_rows} per request (UNS_MAX_ROWS): "
            "send the dispatch list of one machine or cell at a time",
            "too_large",
        )
    out: list[PlannedOperation] = []
    problems: list[Problem] = []
    said: list[str] = []
    for line, row in body:
        if len(row) > len(header):
            msg = f"{len(row)} cells, the header has {len(header)}"
            problems.append(Problem(loc=["body", f"line {line}"], msg=msg, type="extra_cells"))
            said.append(f"{_CONTEXT}, line {line}: {msg}")
            continue
        cells = {k: v.strip() for k, v in zip(header, row, strict=False) if v.strip()}
        try:
            out.append(PlannedOperation.model_validate(cells))
        except ValidationError as exc:
            found = [
                Problem(loc=["body", f"line {line}", *p.loc], msg=p.msg, type=p.type)
                for p in validation_problems(exc.errors())
            ]
            problems += found
            said.append(
                f"{_CONTEXT}, line {line}: "
                + "; ".join(f"{'.'.join(str(x) for x in p.loc[2:]) or 'row'}: {p.msg}" for p in found)
            )
        if len(said) >= MAX_PROBLEMS:
            said.append("(the rest of the file is not checked)")
            break
    if problems:
        raise ApiError(422, "; ".join(said), problems=problems)
    return out
