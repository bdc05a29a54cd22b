"""Merge the Matrix Client-Server OpenAPI files into one self-contained document.

Each spec file is a standalone OpenAPI 3.1 doc whose paths are relative to a
`basePath` server variable (/_matrix/client/v3, /_matrix/client/v1, /_matrix,
/.well-known, ...) and whose $refs point into sibling folders (definitions/,
../../event-schemas/...).  Schemathesis takes one schema per run, so we inline
every $ref, prefix each path with its file's basePath and merge the results.
Recursive $refs (none in v1.19, but cheap to guard) become an open schema.

Optionally sets the example of roomId/userId path parameters to real ones
(the fuzz user's room and user ID), so the examples and coverage phases also
reach code past the "unknown room" checks.

usage: bundle_spec.py SPEC_DIR OUT.json [--room-id ID] [--user-id ID]
"""
import argparse, glob, json, os, sys
from urllib.parse import unquote

import yaml

_docs = {}


def load(path):
    if path not in _docs:
        with open(path) as f:
            _docs[path] = yaml.safe_load(f)
    return _docs[path]


def pointer(doc, frag):
    for part in filter(None, frag.split("/")):
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def inline(node, path, stack=()):
    """Return `node` (from file `path`) with every $ref replaced by its target."""
    if isinstance(node, list):
        return [inline(n, path, stack) for n in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str):
        file_part, _, frag = node["$ref"].partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        key = (target, frag)
        if key in stack:  # recursion: give up on this branch, accept anything
            return {}
        resolved = inline(pointer(load(target), frag), target, stack + (key,))
        siblings = {k: inline(v, path, stack) for k, v in node.items() if k != "$ref"}
        if siblings and isinstance(resolved, dict):
            resolved = {**resolved, **siblings}
        return resolved
    return {k: inline(v, path, stack) for k, v in node.items()}


def merge_ops(a, b):
    have = {(q["in"], q["name"]) for q in a.get("parameters", [])}
    a.setdefault("parameters", []).extend(q for q in b.get("parameters", []) if (q["in"], q["name"]) not in have)
    body_a = a.get("requestBody", {}).get("content", {}).get("application/json")
    body_b = b.get("requestBody", {}).get("content", {}).get("application/json")
    if body_a and body_b:
        body_a["schema"] = {"anyOf": [body_a["schema"], body_b["schema"]]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec_dir")
    ap.add_argument("out")
    ap.add_argument("--room-id")
    ap.add_argument("--user-id")
    args = ap.parse_args()

    merged = {
        "openapi": "3.1.0",
        "info": {"title": "Matrix Client-Server API (merged)", "version": "1.0.0"},
        "paths": {},
        "components": {"securitySchemes": {}},
    }
    examples = {"roomId": args.room_id, "userId": args.user_id}
    for f in sorted(glob.glob(os.path.join(args.spec_dir, "*.yaml"))):
        path = os.path.abspath(f)
        doc = load(path)
        base = doc["servers"][0]["variables"]["basePath"]["default"].rstrip("/")
        schemes = inline(doc.get("components", {}).get("securitySchemes", {}), path)
        merged["components"]["securitySchemes"].update(schemes)
        for p, item in doc.get("paths", {}).items():
            item = inline(item, path)
            for op in item.values():
                if not isinstance(op, dict):
                    continue
                for param in op.get("parameters", []) + item.get("parameters", []):
                    value = examples.get(param.get("name"))
                    if value and param.get("in") == "path":
                        param.pop("examples", None)
                        param["example"] = value
            # Two files may describe one operation, the second spelling the path
            # with a trailing space ("/events ", "/rooms/{roomId}/invite "):
            # merge them into one that takes either's parameters and body.
            target = merged["paths"].setdefault(base + p.strip(), {})
            for method, op in item.items():
                if method in target and isinstance(op, dict):
                    merge_ops(target[method], op)
                else:
                    target[method] = op
    with open(args.out, "w") as out:
        json.dump(merged, out, indent=1)
    n = sum(1 for i in merged["paths"].values() for m in i if m in ("get", "put", "post", "delete", "patch", "head", "options"))
    print(f"bundled {n} operations from {args.spec_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
