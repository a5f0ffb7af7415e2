"""The host builtins OPA's Wasm build of the Rego library calls: `sprintf`, `time.clock`,
`time.now_ns`, `time.weekday`, with the OPA server's semantics.

OPA compiles most builtins into the Wasm module; these four it leaves to the host. Each one here
gives what the OPA server's Go implementation gives for the values the library passes:

* `sprintf(format, args)`: Go's `fmt.Sprintf` after OPA's conversion of each argument (an integer
  as an integer, a number written with a fraction or exponent as a float64, a string as itself,
  anything else as its Rego text). The verbs the library uses are `%v`, `%q`, `%s`, `%d` with
  flags and widths (`%02d`).
* `time.clock([ns, tz])` / `time.weekday([ns, tz])`: the wall clock / weekday name of `ns` in the
  IANA zone `tz` (`""` and `"UTC"` are UTC, `"Local"` the machine's zone), read with zoneinfo.
* `time.now_ns()`: one value per evaluation (OPA fixes the clock for a whole query too).

A call that OPA would reject (an unknown zone, a wrong type) raises `BuiltinError`: the Wasm engine
answers it with an undefined value, as the OPA server does for a failing builtin in a query.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_UTC = dt.UTC
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


class BuiltinError(Exception):
    """The builtin cannot answer for these arguments (OPA would raise a builtin error)."""


# --------------------------------------------------------------------------------------------
# Go formatting
# --------------------------------------------------------------------------------------------


def go_quote(text: str) -> str:
    """strconv.Quote: a double-quoted Go string literal."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append(
                {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, "\\v")
            )
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def go_float(value: float) -> str:
    """Go's `%v` of a float64: the shortest digits, in %e form when the exponent is < -4 or >= 6."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    # repr is the shortest round-tripping form, as Go's; Decimal splits it into digits and exponent
    _, digit_tuple, exp = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exp += len("".join(map(str, digit_tuple))) - len(digits)
    x = len(digits) + exp - 1  # the exponent of the first digit
    if x < -4 or x >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if exp >= 0:
        return sign + digits + "0" * exp
    point = len(digits) + exp
    if point > 0:
        return sign + digits[:point] + "." + digits[point:]
    return sign + "0." + "0" * (-point) + digits


def rego_text(value: Any) -> str:
    """The Rego text of a JSON value (ast.Value.String()): strings quoted, `, ` between items."""
    if isinstance(value, str):
        return go_quote(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number_text(value)
    if isinstance(value, list):
        return "[" + ", ".join(rego_text(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ", ".join(f"{go_quote(k)}: {rego_text(v)}" for k, v in items) + "}"
    raise BuiltinError(f"not a JSON value: {type(value).__name__}")


def _number_text(value: float) -> str:
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return json.dumps(value)


def _go_arg(value: Any) -> Any:
    """OPA's conversion of a sprintf argument: int, float, str or the Rego text of anything else."""
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        return rego_text(value)
    return value  # a JSON float stays a float64 (Go prints 1e9 written as 1000000000.0 as "1e+09")


def _pad(text: str, flags: str, width: str | None, numeric: bool) -> str:
    if width is None or len(text) >= int(width):
        return text
    size = int(width)
    if "-" in flags:
        return text.ljust(size)
    if "0" in flags and numeric:
        sign = text[0] if text[:1] in "+-" else ""
        return sign + text[len(sign) :].rjust(size - len(sign), "0")
    return text.rjust(size)


def _format_one(verb: str, flags: str, prec: str | None, arg: Any) -> tuple[str, bool]:
    """(text, numeric) of one verb applied to one converted argument, as Go's fmt does."""
    if verb in "vs":
        if isinstance(arg, float):
            return go_float(arg), True
        if isinstance(arg, int):
            return str(arg), True
        if verb == "s" and prec is not None:
            return str(arg)[: int(prec)], False
        return str(arg), False
    if verb == "q":
        if isinstance(arg, str):
            return go_quote(arg), False
        if isinstance(arg, int):
            return "'" + chr(arg) + "'" if 0 <= arg <= 0x10FFFF else f"%!q(int={arg})", False
        return f"%!q(float64={go_float(arg)})", False
    if verb == "d":
        if isinstance(arg, float) and arg.is_integer():
            arg = int(arg)  # an integral result of Wasm arithmetic: an integer to the OPA server
        if isinstance(arg, int):
            text = str(arg)
            if "+" in flags and arg >= 0:
                text = "+" + text
            return text, True
        kind = "float64" if isinstance(arg, float) else "string"
        shown = go_float(arg) if isinstance(arg, float) else arg
        return f"%!d({kind}={shown})", False
    if verb == "f":
        if isinstance(arg, int | float):
            return f"{float(arg):.{int(prec) if prec is not None else 6}f}", True
        return f"%!f(string={arg})", False
    raise BuiltinError(f"sprintf verb %{verb} is not provided by the host")


def sprintf(fmt: str, args: list[Any]) -> str:
    if not isinstance(fmt, str) or not isinstance(args, list):
        raise BuiltinError("sprintf: operand types")
    values = [_go_arg(a) for a in args]
    out: list[str] = []
    used = 0
    pos = 0
    for match in _VERB.finditer(fmt):
        out.append(fmt[pos : match.start()])
        pos = match.end()
        flags, width, prec, verb = match.groups()
        if verb == "%":
            out.append("%")
            continue
        if used >= len(values):
            out.append(f"%!{verb}(MISSING)")
            continue
        text, numeric = _format_one(verb, flags, prec, values[used])
        used += 1
        out.append(_pad(text, flags, width, numeric))
    out.append(fmt[pos:])
    if used < len(values):
        extra = ", ".join(f"{_go_type(v)}={_format_one('v', '', None, v)[0]}" for v in values[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _go_type(value: Any) -> str:
    return {int: "int", float: "float64", str: "string"}.get(type(value), "string")


# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _zone(name: str) -> dt.tzinfo:
    if name in ("", "UTC"):
        return _UTC
    if name == "Local":
        local = dt.datetime.now().astimezone().tzinfo
        return local if local is not None else _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BuiltinError(f"unknown time zone {name!r}") from exc


def _moment(operand: Any) -> dt.datetime:
    if isinstance(operand, list) and len(operand) == 2 and isinstance(operand[1], str):
        ns, zone = operand[0], _zone(operand[1])
    else:
        ns, zone = operand, _UTC
    if isinstance(ns, bool) or not isinstance(ns, int | float):
        raise BuiltinError("time: operand must be a number or [number, zone]")
    seconds, rest = divmod(int(ns), 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, tz=zone)
    return base + dt.timedelta(microseconds=rest // 1000)


def clock(operand: Any) -> list[int]:
    moment = _moment(operand)
    return [moment.hour, moment.minute, moment.second]


def weekday(operand: Any) -> str:
    return _WEEKDAYS[_moment(operand).weekday()]


# The host builtins by the name OPA's Wasm module asks for; each takes the JSON arguments.
HostBuiltin = Callable[..., Any]
HOST_BUILTINS: dict[str, HostBuiltin] = {
    "sprintf": sprintf,
    "time.clock": clock,
    "time.weekday": weekday,
}
# time.now_ns is answered by the engine (one value per evaluation).
NOW_NS = "time.now_ns"
