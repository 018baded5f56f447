#!/usr/bin/env python3
"""Generates control-plane/src/api/protobuf_schema.json: for every protobuf message of the API
groups podlet serves, its fields by tag with their JSON names, wire kinds and message types.

Field tags and kinds come from k8s-pb's generated prost code; JSON names from k8s-openapi's
serde code for the same type (the two crates name Rust fields alike; JSON names keep the
acronyms, e.g. `podCIDR`). Run after updating either crate:

    python3 hack/gen-protobuf-schema.py > control-plane/src/api/protobuf_schema.json
"""
import glob
import json
import os
import re
import sys

REG = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))[0]
PB = sorted(glob.glob(REG + "k8s-pb-0.*"))[-1] + "/src/"
OA = sorted(glob.glob(REG + "k8s-openapi-0.*"))[-1] + "/src/v1_33/"

def norm(rust):
    """prost and k8s-openapi split acronyms differently (`pod_cid_rs`, `pod_cidrs`)."""
    return rust.replace("_", "").lower()

# JSON names: (module dir, struct) -> {rust field: json name}
json_names = {}
for f in glob.glob(OA + "**/*.rs", recursive=True):
    text = open(f).read()
    structs = re.findall(r"pub struct (\w+)", text)
    if not structs:
        continue
    d = os.path.dirname(os.path.relpath(f, OA))
    fields = dict((norm(r), j) for j, r in re.findall(r'"(\w+)" => Field::Key_(\w+)', text))
    for s in structs:
        json_names[(d, s)] = fields
# k8s-openapi puts apimachinery under apimachinery/pkg/apis/meta/v1 like k8s-pb does.

def camel(rust):
    parts = rust.rstrip("_").split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])

schema = {}
field_re = re.compile(
    r"#\[prost\(([^\]]*)\)\]\s*pub (?:r#)?(\w+):\s*(.+?),\n(?=\s*(?:#\[|///|$))", re.S)
for f in glob.glob(PB + "**/mod.rs", recursive=True):
    d = os.path.dirname(os.path.relpath(f, PB))
    module = d.replace("/", ".")
    text = open(f).read()
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        name, body = m.group(1), m.group(2) + "\n"
        names = json_names.get((d, name), {})
        fields = []
        for a, rust, ty in field_re.findall(body):
            tag = int(re.search(r'tag = "(\d+)"', a).group(1))
            repeated = "repeated" in a
            ref = None
            if a.startswith("btree_map"):
                kv = re.search(r'btree_map = "([^"]*)"', a).group(1).replace(" ", "")
                kind = "map:" + kv
                if kv.endswith("message"):
                    t = re.sub(r"\s+", "", ty).replace(",>", ">").replace("::prost::alloc::string::String", "String")
                    ref = re.search(r"BTreeMap<String,(.*)>$", t).group(1)
            elif a.startswith("message"):
                kind = "message"
                ty = re.sub(r"\s+", "", ty).replace(",>", ">")
                inner = re.search(r"(?:Option|Vec|Box)<(.*)>", ty)
                ref = inner.group(1) if inner else ty
                ref = re.sub(r"^(?:::prost::alloc::boxed::)?Box<(.*)>$", r"\1", ref)
            elif a.startswith("bytes"):
                kind = "bytes"
            else:
                kind = a.split(",")[0].strip()
            if ref is not None:
                # Resolve `super::super::x::y::Z` against this module.
                segs = module.split(".")
                parts = ref.replace("::core::option::Option<", "").split("::")
                while parts and parts[0] == "super":
                    segs = segs[:-1]
                    parts = parts[1:]
                ref = ".".join(segs + parts) if len(parts) > 0 else ref
            fields.append([tag, names.get(norm(rust), camel(rust)), kind, repeated, ref])
        schema[module + "." + name] = fields

# Only what the served groups reach.
roots = [k for k in schema if re.match(
    r"api\.(core|apps|rbac|coordination|discovery|events|scheduling|certificates|authentication|authorization|policy|batch)\.v1\.", k)]
keep, todo = set(), list(roots)
while todo:
    k = todo.pop()
    if k in keep or k not in schema:
        continue
    keep.add(k)
    todo.extend(f[4] for f in schema[k] if f[4])
missing = sorted({f[4] for k in keep for f in schema[k] if f[4] and f[4] not in schema})
if missing:
    sys.exit(f"unresolved message types: {missing}")
json.dump({k: schema[k] for k in sorted(keep)}, sys.stdout, separators=(",", ":"))
print()
