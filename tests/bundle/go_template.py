"""Go text/template (the subset Ollama Modelfile templates use) rendered in Python, and the values Ollama
passes a template, for checking the Modelfile templates without a Go toolchain."""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'\(|\)|"[^"]*"|[^\s()]+')


def go_render(tmpl: str, values: dict) -> str:
    """Render the subset of Go's text/template the Modelfile templates use (if/else if/else/range/end,
    $var := / =, eq ne and not len slice, .Field, $.Field, trim markers), as Ollama's Go would."""
    parts, pos = [], 0
    for m in _ACTION.finditer(tmpl):
        parts += [("text", tmpl[pos:m.start()]), ("act", m.group(2), m.group(1), m.group(3))]
        pos = m.end()
    parts.append(("text", tmpl[pos:]))
    for i, p in enumerate(parts):  # trim markers eat the whitespace next to them
        if p[0] == "act" and p[2] and i and parts[i - 1][0] == "text":
            parts[i - 1] = ("text", parts[i - 1][1].rstrip())
        if p[0] == "act" and p[3] and i + 1 < len(parts) and parts[i + 1][0] == "text":
            parts[i + 1] = ("text", parts[i + 1][1].lstrip())
    out, scopes = [], [{"$": values}]

    def expr(toks, dot):
        def one():
            t = toks.pop(0)
            if t == "(":
                v = call()
                assert toks.pop(0) == ")"
                return v
            if t.startswith('"'):
                return t[1:-1]
            if t.isdigit():
                return int(t)
            if t.startswith("$."):
                return scopes[0]["$"][t[2:]]
            if t.startswith("$"):
                name, _, field = t.partition(".")  # $var or $var.Field
                v = next(s[name] for s in reversed(scopes) if name in s)
                return v[field] if field else v
            if t.startswith("."):
                return dot[t[1:]]
            return t

        def call():
            f = toks[0]
            fns = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "and": lambda a, b: a and b,
                   "not": lambda a: not a, "len": len, "slice": lambda x, i: x[i:]}
            if f in fns:
                toks.pop(0)
                args = []
                while toks and toks[0] != ")":
                    args.append(one())
                return fns[f](*args)
            return one()

        return call()

    def run(i, dot, emit):  # runs parts from i until an end/else at this level; returns (index, word)
        while i < len(parts):
            p = parts[i]
            if p[0] == "text":
                if emit:
                    out.append(p[1])
                i += 1
                continue
            toks = _TOKEN.findall(p[1])
            word = toks[0]
            if word in ("end", "else"):
                return i, p[1]
            if word == "if":
                taken = False
                cond = emit and bool(expr(toks[1:], dot))
                while True:
                    i, stop = run(i + 1, dot, emit and cond and not taken)
                    taken = taken or cond
                    if stop == "end":
                        break
                    rest = _TOKEN.findall(stop)[1:]
                    cond = emit and not taken and (not rest or bool(expr(rest[1:], dot)))
                i += 1
            elif word == "range":
                named = toks[1].startswith("$")  # range $i, $_ := LIST  or  range LIST
                k, v = (toks[1].rstrip(","), toks[2]) if named else ("$i", "$_")
                items = expr(toks[4:] if named else toks[1:], dot) if emit else []
                end = None
                for n, item in enumerate(items):
                    scopes.append({k: n, v: item})
                    end, _ = run(i + 1, item, True)
                    scopes.pop()
                if end is None:
                    end, _ = run(i + 1, dot, False)
                i = end + 1
            elif len(toks) > 1 and toks[1] in (":=", "="):
                if emit:
                    value = expr(toks[2:], dot)
                    scope = scopes[-1] if toks[1] == ":=" else next(s for s in reversed(scopes) if word in s)
                    scope[word] = value
                i += 1
            else:
                if emit:
                    out.append(str(expr(toks, dot)))
                i += 1
        return i, None

    run(0, values, True)
    return "".join(out)


def ollama_values(messages):
    """What Ollama passes a .Messages template: every system message joined in .System, and the messages
    (system ones included) with consecutive same-role turns merged (ollama/template: collate)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    merged = []
    for m in messages:
        if merged and merged[-1]["Role"] == m["role"]:
            merged[-1]["Content"] += "\n\n" + m["content"]
        else:
            merged.append({"Role": m["role"], "Content": m["content"], "Thinking": ""})
    return {"System": system, "Messages": merged, "IsThinkSet": False, "Think": False}
