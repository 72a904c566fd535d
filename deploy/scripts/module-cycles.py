#!/usr/bin/env python3
"""Prints the import cycles between a crate's modules (files), from every
`crate::a::b` path and `use crate::{…}` group in its sources; exits 1 if any.
  deploy/scripts/module-cycles.py admin-api/src"""
import os, re, sys

root = sys.argv[1] if len(sys.argv) > 1 else 'admin-api/src'
modules = {}
for dirpath, _, files in os.walk(root):
    for f in files:
        if f.endswith('.rs'):
            rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3]
            name = rel.replace(os.sep, '::')
            name = re.sub(r'(::)?mod$', '', name)
            name = '' if name == 'lib' else name
            modules[name] = os.path.join(dirpath, f)

def paths(text):
    text = re.sub(r'//[^\n]*', '', text)
    found = set()
    for m in re.finditer(r'crate::((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)', text):
        found.add(m.group(1))
    # use crate::{a::{b, c}, d::e}
    for m in re.finditer(r'use crate::\{', text):
        depth, i, start = 1, m.end(), m.end()
        while depth:
            depth += {'{': 1, '}': -1}.get(text[i], 0)
            i += 1
        group = text[start:i - 1]
        stack, token = [], ''
        for ch in group + ',':
            if ch == '{':
                stack.append(token.strip().rstrip(':')); token = ''
            elif ch in ',}':
                if token.strip():
                    found.add('::'.join([s for s in stack if s] + [token.strip()]))
                token = ''
                if ch == '}':
                    stack.pop()
            else:
                token += ch
    return found

def owner(path):
    parts = path.split('::')
    for n in range(len(parts), 0, -1):
        cand = '::'.join(parts[:n])
        if cand in modules:
            return cand
    return None

graph = {}
for name, file in modules.items():
    deps = set()
    for p in paths(open(file).read()):
        o = owner(p)
        if o is not None and o != name and not name.startswith(o + '::') and o != '':
            deps.add(o)
    graph[name] = deps

# strongly connected components (Tarjan)
index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in graph.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            comps.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in graph:
    if v not in index:
        visit(v)
for c in comps:
    print('cycle:', ' <-> '.join(c))
print(f'{len(modules)} modules, {len(comps)} cycles')
sys.exit(1 if comps else 0)
