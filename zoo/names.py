"""The one name validator: every name the catalog stores goes through :func:`check_name`.

Names (populations, models, architectures, tensors, tags, metrics, hyperparameters, lineage ops and
roles, runs) are shown in terminals, tables and the explorer, so a name must look like what it is.
A name is refused (:class:`~zoo.errors.ConfigError` naming the kind of name, the character as
``U+XXXX`` with its position, and why) when it

* is empty or longer than its kind allows, or is not a ``str``;
* starts or ends with whitespace (``" mlp"`` and ``"mlp"`` would look the same);
* holds a control character: C0 (U+0000-U+001F, NUL, tab and newline included), DEL (U+007F) or C1
  (U+0080-U+009F): they move the cursor, clear lines or end strings in other tools;
* holds a bidirectional control: embeddings and overrides (U+202A-U+202E), isolates
  (U+2066-U+2069), marks (U+200E, U+200F, U+061C): they make text display in another order than it
  is stored (``"evil\u202egnp.exe"`` shows as ``"evilexe.png"``);
* holds any other format character (Unicode category Cf: zero-width space U+200B, word joiner
  U+2060, BOM U+FEFF, soft hyphen U+00AD, tag characters, ...): invisible, so two different names
  would look identical. The one exception is the zero-width joiner and non-joiner (U+200D, U+200C)
  *between two non-ASCII characters*: Persian, Indic scripts and emoji sequences need them there,
  while next to an ASCII character (or at an end) they can only hide a difference;
* holds a line or paragraph separator (U+2028, U+2029), an unpaired surrogate (U+D800-U+DFFF; from
  bytes that were not valid UTF-8, e.g. a command-line argument), a noncharacter (U+FDD0-U+FDEF,
  U+xxFFFE, U+xxFFFF), or a Hangul filler (U+115F, U+1160, U+3164, U+FFA0: blank "letters").

Everything else is allowed, any script included; spaces inside a name are fine. Private-use and
unassigned code points are allowed (a code point unassigned in this Python's Unicode database may be
a real character in a newer one). Lookups by name are not validated: an invalid name simply is not
found.
"""

from __future__ import annotations

import unicodedata

from zoo.errors import ConfigError

__all__ = ["check_name", "encodable", "name_problem", "safe_repr"]

_BIDI = {
    0x061C: "ARABIC LETTER MARK",
    0x200E: "LEFT-TO-RIGHT MARK",
    0x200F: "RIGHT-TO-LEFT MARK",
    0x202A: "LEFT-TO-RIGHT EMBEDDING",
    0x202B: "RIGHT-TO-LEFT EMBEDDING",
    0x202C: "POP DIRECTIONAL FORMATTING",
    0x202D: "LEFT-TO-RIGHT OVERRIDE",
    0x202E: "RIGHT-TO-LEFT OVERRIDE",
    0x2066: "LEFT-TO-RIGHT ISOLATE",
    0x2067: "RIGHT-TO-LEFT ISOLATE",
    0x2068: "FIRST STRONG ISOLATE",
    0x2069: "POP DIRECTIONAL ISOLATE",
}
_JOINERS = {0x200C, 0x200D}
_FILLERS = {0x115F, 0x1160, 0x3164, 0xFFA0}


def _char_name(cp: int) -> str:
    if cp in _BIDI:
        return _BIDI[cp]
    if 0xD800 <= cp <= 0xDFFF:
        return "SURROGATE"
    name = unicodedata.name(chr(cp), "")
    if name:
        return name
    if cp < 0x20 or cp == 0x7F:
        return "CONTROL " + ("NUL" if cp == 0 else "DEL" if cp == 0x7F else f"^{chr(cp + 0x40)}")
    return "CONTROL" if 0x80 <= cp <= 0x9F else "UNNAMED"


def _why(text: str, i: int) -> str | None:
    """Why the character at ``i`` is refused, or None."""
    cp = ord(text[i])
    if cp < 0x20 or cp == 0x7F:
        return "a control character"
    if 0x80 <= cp <= 0x9F:
        return "a C1 control character"
    if cp in _BIDI:
        return "a bidirectional control, which makes text display in another order than it is stored"
    if 0xD800 <= cp <= 0xDFFF:
        return "an unpaired surrogate (the input was not valid UTF-8 or UTF-16)"
    if cp in _JOINERS:
        ok = 0 < i < len(text) - 1 and all(
            ord(c) > 0x7F and unicodedata.category(c) not in ("Cf", "Cc", "Zs", "Zl", "Zp") for c in (text[i - 1], text[i + 1])
        )
        return None if ok else "a zero-width joiner outside a non-ASCII script or emoji sequence (invisible)"
    cat = unicodedata.category(text[i])
    if cat == "Cf":
        return "an invisible format character"
    if cat in ("Zl", "Zp"):
        return "a line or paragraph separator"
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return "a Unicode noncharacter"
    if cp in _FILLERS:
        return "an invisible filler character"
    return None


def encodable(text: str) -> bool:
    """Whether ``text`` can be stored (valid UTF-8: no unpaired surrogates, e.g. from undecodable argv bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_repr(text: object, limit: int = 80) -> str:
    """``repr`` with every non-ASCII or unprintable character escaped (safe to print anywhere)."""
    if isinstance(text, str) and len(text) > limit:
        text = text[:limit] + "..."
    return ascii(text)


def name_problem(name: object, *, max_len: int = 300, allow_digits: bool = True) -> str | None:
    """What is wrong with ``name`` (a sentence), or None when it is a valid name."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if len(name) > max_len:
        return f"it has {len(name)} characters, more than {max_len}"
    for i in range(len(name)):
        why = _why(name, i)
        if why is not None:
            cp = ord(name[i])
            return f"character U+{cp:04X} ({_char_name(cp)}) at position {i} is {why}"
    if name.strip() != name:
        end = "leading" if name[0].isspace() else "trailing"
        return f"it has {end} whitespace (U+{ord(name[0] if end == 'leading' else name[-1]):04X})"
    if not allow_digits and name.isdigit():
        return "it is all digits (that reads as a model id)"
    return None


def check_name(name: object, what: str, *, max_len: int = 300, allow_digits: bool = True) -> str:
    """Return ``name`` if it is a valid ``what`` name (see the module docstring), else raise ConfigError."""
    problem = name_problem(name, max_len=max_len, allow_digits=allow_digits)
    if problem is not None:
        raise ConfigError(
            f"invalid {what} name {safe_repr(name)}: {problem}. Names must be 1-{max_len} visible characters "
            "with no control, bidirectional or invisible format characters and no leading/trailing spaces; "
            "rename it."
        )
    return name  # type: ignore[return-value]
