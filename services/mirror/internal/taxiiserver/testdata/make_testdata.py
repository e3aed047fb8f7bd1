#!/usr/bin/env python3
"""Builds the small real-data bundles of this folder from /work/shared/attack (ATT&CK 18.0/18.1,
(c) The MITRE Corporation, redistributed under the ATT&CK terms of use). Run from this folder."""
import collections, gzip, json

SRC = "/work/shared/attack/"

def objects(name):
    with gzip.open(SRC + name) as f:
        return json.load(f)["objects"]

def write(name, bundle_id, objs, indent, gz=True):
    body = {"type": "bundle", "id": bundle_id, "objects": objs}
    text = json.dumps(body, indent=indent, ensure_ascii=False).encode()
    if gz:
        # mtime=0 keeps the file byte-identical between runs.
        with gzip.GzipFile(name, "wb", mtime=0) as f:
            f.write(text)
    else:
        with open(name, "wb") as f:
            f.write(text)

ics0 = {o["id"]: o for o in objects("ics-attack-18.0.json.gz")}
ics1 = objects("ics-attack-18.1.json.gz")
by_type = collections.defaultdict(list)
for o in ics1:
    by_type[o["type"]].append(o)
changed = [o for o in by_type["x-mitre-data-component"]
           if ics0[o["id"]].get("modified") != o.get("modified")]
unchanged = [o for o in by_type["x-mitre-data-component"] if o not in changed]
pick = (by_type["identity"] + by_type["marking-definition"] + by_type["x-mitre-matrix"]
        + by_type["x-mitre-tactic"][:3] + by_type["attack-pattern"][:6] + changed[:6]
        + unchanged[:2] + by_type["malware"][:3] + by_type["intrusion-set"][:2]
        + by_type["campaign"][:1] + by_type["course-of-action"][:1] + by_type["x-mitre-asset"][:1]
        + by_type["relationship"][:12])
ids = {o["id"] for o in pick}
coll1 = dict(by_type["x-mitre-collection"][0])
coll1["x_mitre_contents"] = [c for c in coll1["x_mitre_contents"] if c["object_ref"] in ids]
coll0 = dict(ics0[coll1["id"]])
coll0["x_mitre_contents"] = [c for c in coll0["x_mitre_contents"] if c["object_ref"] in ids]
write("ics-attack-18.1.json.gz", "bundle--e4f0febd-b8cf-4272-b892-71049d272c40",
      [coll1] + pick, 4)
write("ics-attack-18.0.json.gz", "bundle--8352dcda-1d46-4824-9907-f4bea2e89602",
      [coll0] + [ics0[o["id"]] for o in pick], 4)

ent = objects("enterprise-attack-18.1.json.gz")
etype = collections.defaultdict(list)
for o in ent:
    etype[o["type"]].append(o)
epick = (etype["marking-definition"] + etype["identity"] + etype["x-mitre-tactic"][:2]
         + etype["attack-pattern"][:8] + etype["malware"][:2] + etype["relationship"][:8])
write("enterprise-attack-18.1.json.gz", "bundle--enterprise-attack", epick, None)

# A bundle of no known domain: two versions of one object, an object without id, and one more.
dc = changed[0]
write("lab-feed.json", "bundle--00000000-0000-4000-8000-000000000001",
      [ics0[dc["id"]], dc, {"type": "indicator", "name": "no id"}, by_type["malware"][0]], 2,
      gz=False)
