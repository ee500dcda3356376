"""User names for the ShapeEnv's symbols (t, named dims, widths in layer order) and the guards that
bound them, in those names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sympy

from .._torch import ShapeEnv
from ..errors import TraceError
from ..guards import as_bound, holds_everywhere, tightest
from ..symbols import symbol, to_plain, width_names

__all__ = ["WIDTH", "name_symbols", "assumptions_of"]

#: The name a width dim of an input gets until the widths are named in layer order.
WIDTH = "__width__"


def name_symbols(
    shape_env: ShapeEnv,
    input_syms: Mapping[sympy.Symbol, str],
    width_syms: Sequence[sympy.Symbol],
    widths: str | None,
) -> tuple[dict[sympy.Symbol, sympy.Expr], dict[str, sympy.Symbol], dict[sympy.Symbol, int]]:
    """Give every free ShapeEnv symbol a user name: t and named dims first, widths in layer order."""
    rename: dict[sympy.Symbol, sympy.Expr] = {}
    user: dict[str, sympy.Symbol] = {}
    hints: dict[sympy.Symbol, int] = {}
    values = shape_env.backed_var_to_val if hasattr(shape_env, "backed_var_to_val") else shape_env.var_to_val

    def canon(sym: sympy.Symbol) -> sympy.Expr:
        return shape_env.replace(sym)

    ordered: list[tuple[sympy.Symbol, str | None]] = []
    ordered += [(s, name) for s, name in input_syms.items() if name != WIDTH]
    width_like = [s for s, name in input_syms.items() if name == WIDTH] + list(width_syms)
    seen_width: list[sympy.Expr] = []
    for s in width_like:
        c = canon(s)
        if c.is_Symbol and c not in seen_width and c not in [canon(x) for x, _ in ordered]:
            seen_width.append(c)
    names = width_names(len(seen_width), widths or "d")
    for c, name in zip(seen_width, names):
        ordered.append((c, name))

    for s, name in ordered:
        c = canon(s)
        if not c.is_Symbol:
            if name in ("t",) or name in {d for d in input_syms.values()}:
                if c.is_Number:
                    hint = "" if name == "t" else (
                        f" (if another input has this size, name it there too: "
                        f"dims={{{name!r}: [(input, dim), ...]}})"
                    )
                    raise TraceError(
                        f"the model pins {name!r} to {c}: a shape check fixed it during tracing, "
                        f"so no formula in {name} exists on the symbolic route{hint}"
                    )
            continue
        if c in rename:
            continue
        user_sym = symbol(name)
        rename[c] = user_sym
        user.setdefault(name, user_sym)
        if c in values:
            hints[user_sym] = int(values[c])
    for s in list(input_syms) + list(width_syms):
        c = canon(s)
        if s not in rename and c.is_Symbol and c in rename:
            rename[s] = rename[c]
    return rename, user, hints


def assumptions_of(
    shape_env: ShapeEnv, rename: Mapping[sympy.Symbol, sympy.Expr], user: Mapping[str, sympy.Symbol]
) -> list[sympy.Basic]:
    """Guards that bound a user symbol (e.g. ``t < 16``), in user symbols; noise dropped."""
    out: list[sympy.Basic] = []
    allowed = set(user.values())
    for guard in shape_env.guards:
        try:
            expr = to_plain(shape_env.replace(guard.expr)).xreplace(rename)
        except (TypeError, ValueError, ZeroDivisionError):  # sympy cannot rewrite it: not a bound we can state
            continue
        if expr in (sympy.true, sympy.false) or not expr.free_symbols <= allowed:
            continue
        if not isinstance(expr, (sympy.StrictLessThan, sympy.LessThan, sympy.StrictGreaterThan, sympy.GreaterThan)):
            continue
        if holds_everywhere(expr) or expr in out:
            continue
        out.append(as_bound(expr))
    return tightest(out)
