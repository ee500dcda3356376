"""User names for the ShapeEnv's symbols (t, named dims, widths in layer order, ``u_0, u_1, …`` for
data-dependent sizes) and the conditions the guards put on them, in those names."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import sympy
import torch

from .._torch import ShapeEnv, is_op, op_names
from ..errors import TraceError
from ..guards import as_bound, holds_everywhere, pattern_of, readable, tightest
from ..opsets import ALIAS_OPS
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
    """Give every free ShapeEnv symbol a user name: t and named dims first, widths in layer order,
    then the data-dependent sizes (torch's ``u0, u1, …``) as ``u_0, u_1, …``.

    A named dim (or t) that a shape check fixed to a number, or to a function of other sizes,
    raises :class:`TraceError`: no formula in it exists.
    """
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

    named = {"t", *input_syms.values()} - {WIDTH}
    for s, name in ordered:
        c = canon(s)
        if not c.is_Symbol:
            if name in named:
                if c.is_Number:
                    hint = "" if name == "t" else (
                        f" (if another input has this size, name it there too: "
                        f"dims={{{name!r}: [(input, dim), ...]}})"
                    )
                    raise TraceError(
                        f"the model pins {name!r} to {c}: a shape check fixed it during tracing, "
                        f"so no formula in {name} exists on the symbolic route{hint}"
                    )
                tied = to_plain(c).xreplace(rename)
                raise TraceError(
                    f"the model ties {name!r} to {tied}: a shape check made it a function of other sizes "
                    f"during tracing; name one of them only, or keep {name} concrete"
                )
            continue
        if c in rename:
            if name != str(rename[c]) and {name, str(rename[c])} <= named:
                raise TraceError(
                    f"the model ties {name!r} to {str(rename[c])!r}: a shape check made them equal during "
                    f"tracing; give both dims the one name {str(rename[c])!r}, or keep one concrete"
                )
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
    name_unbacked(shape_env, rename, user)
    return rename, user, hints


def assumptions_of(
    shape_env: ShapeEnv, rename: Mapping[sympy.Symbol, sympy.Expr], user: Mapping[str, sympy.Symbol],
    graph: torch.fx.Graph | None = None,
) -> list[sympy.Basic]:
    """The conditions the guards put on the user symbols, readable and without noise.

    Bounds (``t <= 15``, ``H >= 5``) and divisibilities (``Eq(Mod(L, 8), 0)``: L divisible by 8)
    are returned. A guard that holds at every probe size (respecting the lower bounds and the
    divisibilities) is noise; so is an ``Ne`` that only excludes a few sizes (a size-1
    specialization). An equality that fixes a symbol to a few sizes raises :class:`TraceError`
    ("the model pins 'H'"), naming the layer of ``graph`` that fixes it when one is found.
    """
    allowed = set(user.values())
    guards: list[tuple[sympy.Basic, sympy.Basic]] = []  # (in user symbols, as torch has it)
    for guard in shape_env.guards:
        if isinstance(guard.expr, sympy.Ne) and 0 not in guard.expr.args:
            continue  # Ne(x, 1) and kin: a size-1 specialization, which states nothing (and they are many)
        try:
            expr = to_plain(shape_env.replace(guard.expr)).xreplace(rename)
        except (TypeError, ValueError, ZeroDivisionError):  # sympy cannot rewrite it: not a bound we can state
            continue
        if expr in (sympy.true, sympy.false) or not expr.free_symbols <= allowed:
            continue
        guards.append((readable(expr), guard.expr))
    hints = _user_hints(shape_env, rename)
    lower = _lower_bounds(shape_env, rename, [g for g, _ in guards])
    periods: dict[sympy.Symbol, int] = {}
    out: list[sympy.Basic] = _nonzero_bounds([g for g, _ in guards if isinstance(g, sympy.Ne)], hints, lower)
    unread: list[sympy.Basic] = []
    for expr, raw in guards:
        if isinstance(expr, (sympy.Eq, sympy.Ne)):
            read, other = _equality(expr, raw, hints, lower, periods, shape_env, graph)
            out += read
            unread += other
    out += [e for e in dict.fromkeys(unread) if not holds_everywhere(e, lower, periods)]
    for expr, _ in guards:
        if isinstance(expr, (sympy.StrictLessThan, sympy.LessThan, sympy.StrictGreaterThan, sympy.GreaterThan)):
            bound = as_bound(expr)
            if _is_lower_bound(bound):  # what the probes start from: kept unless every size meets it
                if bound.rhs > 2:
                    out.append(bound)
            elif not holds_everywhere(expr, lower, periods):
                out.append(bound)
    return tightest(out)


def _is_lower_bound(rel: sympy.Basic) -> bool:
    """``s >= c`` for a symbol and a number."""
    return isinstance(rel, sympy.GreaterThan) and rel.lhs.is_Symbol and rel.rhs.is_Number


def _user_hints(shape_env: ShapeEnv, rename: Mapping[sympy.Symbol, sympy.Expr]) -> dict[sympy.Symbol, int]:
    """The example value of each user symbol."""
    values = shape_env.backed_var_to_val if hasattr(shape_env, "backed_var_to_val") else shape_env.var_to_val
    return {u: int(values[s]) for s, u in rename.items() if s in values and u.is_Symbol}


def _lower_bounds(
    shape_env: ShapeEnv, rename: Mapping[sympy.Symbol, sympy.Expr], guards: Sequence[sympy.Basic]
) -> dict[sympy.Symbol, int]:
    """The smallest size of each user symbol: the ShapeEnv's range and the ``s >= c`` guards."""
    lower: dict[sympy.Symbol, int] = {}
    for s, u in rename.items():
        low = getattr(shape_env.var_to_range.get(s), "lower", None)
        if u.is_Symbol and isinstance(low, (int, sympy.Integer)):
            lower[u] = max(lower.get(u, 0), int(low))
    for g in guards:
        if len(g.free_symbols) == 1 and isinstance(g, (sympy.GreaterThan, sympy.StrictGreaterThan, sympy.LessThan,
                                                       sympy.StrictLessThan)):
            b = as_bound(g)
            if isinstance(b, sympy.GreaterThan) and b.lhs.is_Symbol and b.rhs.is_Integer:
                lower[b.lhs] = max(lower.get(b.lhs, 0), int(b.rhs))
    return lower


def _nonzero_bounds(
    guards: Sequence[sympy.Basic], hints: Mapping[sympy.Symbol, int], lower: dict[sympy.Symbol, int]
) -> list[sympy.Basic]:
    """Lower bounds from ``Ne`` guards that fail only at the smallest sizes (``Ne(floor(H/4), 0)``
    fails at H = 2, 3: ``H >= 4``); ``lower`` is raised to them."""
    out: list[sympy.Basic] = []
    for expr in guards:
        if not (expr.lhs == 0 or expr.rhs == 0) or holds_everywhere(expr, lower):  # Ne(…, 1): size-1 noise
            continue
        for s in sorted(expr.free_symbols, key=str):
            start = lower.get(s, 2)
            p = pattern_of(sympy.Eq(expr.lhs, expr.rhs), s, hints, start)
            if p.kind == "finite" and p.points and p.points == tuple(range(start, p.points[-1] + 1)):
                lower[s] = p.points[-1] + 1
                out.append(sympy.Ge(s, lower[s]))
    return out


def _equality(
    expr: sympy.Basic, raw: sympy.Basic, hints: Mapping[sympy.Symbol, int], lower: Mapping[sympy.Symbol, int],
    periods: dict[sympy.Symbol, int], shape_env: ShapeEnv, graph: torch.fx.Graph | None,
) -> tuple[list[sympy.Basic], list[sympy.Basic]]:
    """What an ``Eq``/``Ne`` guard says of each of its symbols, read from where it holds.

    Holding only at sizes ``≡ r (mod k)`` gives ``Eq(Mod(s, k), r)`` (and a probe period); an
    ``Eq`` holding at a few sizes pins the symbol (raised); an ``Ne`` failing at a few sizes is
    noise. Returns the conditions read, and the guard itself when it reads as none of these
    (the caller keeps it unless it holds at every size the read conditions allow).
    """
    negate = isinstance(expr, sympy.Ne)
    probe = sympy.Eq(expr.lhs, expr.rhs) if negate else expr
    out: list[sympy.Basic] = []
    other: list[sympy.Basic] = []
    if holds_everywhere(expr, lower, periods):  # the common case, and cheap: nothing to read
        return out, other
    for s in sorted(expr.free_symbols, key=str):
        p = pattern_of(probe, s, hints, lower.get(s, 2))
        if p.kind == "periodic":
            cond = sympy.Mod(s, p.period)
            out.append(sympy.Ne(cond, p.residue) if negate else sympy.Eq(cond, p.residue))
            if not negate and p.residue == 0:
                periods[s] = math.lcm(periods.get(s, 1), p.period)
        elif p.kind == "finite" and not negate:
            raise TraceError(_pinned_message(s, p.points, expr, raw, shape_env, graph))
        elif p.kind == "other" and not negate:
            other = [expr]
    return out, other


def _pinned_message(
    s: sympy.Symbol, points: Sequence[int], expr: sympy.Basic, raw: sympy.Basic, shape_env: ShapeEnv,
    graph: torch.fx.Graph | None,
) -> str:
    """Why no formula in ``s`` exists: the shape check, the sizes it allows, the layer it is in."""
    sizes = ", ".join(map(str, points)) if points else "none"
    where = _layer_of(graph, raw, shape_env) if graph is not None else None
    return (
        f"the model pins {str(s)!r}: a shape check{f' in {where}' if where else ''} requires {expr}, which "
        f"(the other sizes at their example values) holds only at {s} in {{{sizes}}}, so no formula in "
        f"{s} exists on the symbolic route; keep {s} concrete (e.g. a fixed-size Linear after a flatten)"
    )


def _layer_of(graph: torch.fx.Graph, raw: sympy.Basic, shape_env: ShapeEnv) -> str | None:
    """The module of the first computing op that takes a tensor sized by a side of ``raw``."""
    sides = {shape_env.replace(side) for side in (raw.lhs, raw.rhs) if not sympy.sympify(side).is_Number}
    for node in graph.nodes:
        if node.op != "call_function" or not is_op(node.target) or op_names(node.target)[1] in ALIAS_OPS:
            continue
        for arg in node.all_input_nodes:
            shape = getattr(arg.meta.get("val"), "shape", ())
            dims = {shape_env.replace(d.node.expr) for d in shape if isinstance(d, torch.SymInt)}
            if dims & sides:
                module = (node.meta.get("custom") or {}).get("module", "")
                return f"layer {module!r}" if module else f"op {op_names(node.target)[1]}"
    return None


#: torch's names for data-dependent sizes (``u0`` from ``nonzero``, ``unique``, …).
_UNBACKED = re.compile(r"u(\d+)")


def name_unbacked(shape_env: ShapeEnv, rename: dict[sympy.Symbol, sympy.Expr],
                  user: dict[str, sympy.Symbol]) -> None:
    """Name each free data-dependent size ``u0`` as the user symbol ``u_0`` (``subs(u_0=…)``)."""
    for s in list(shape_env.var_to_range):
        m = _UNBACKED.fullmatch(str(s))
        if m is None or s in rename or not shape_env.replace(s).is_Symbol:
            continue
        name = f"u_{m.group(1)}"
        rename[s] = user.setdefault(name, symbol(name))
