# Kernel launches of an inductor wrapper module (the DP backward) by the dp_ node kinds in each Triton kernel's graph
# fragment: python3 kernel_attribution.py WRAPPER.py (session 22: the WRN-16-4 DP backward, 218 launches).
import re, sys, collections
text = open(sys.argv[1]).read()
# kernel definitions: fragment comments followed by "name = async_compile.triton('name'"
defs = {}
for m in re.finditer(r"((?:#.*\n)+)(triton_\w+) = async_compile\.triton\(", text):
    names = re.findall(r"%(\w+) :", m.group(1))
    defs[m.group(2)] = names
call = text[text.index("    def call(self, args):"):]
launches = re.findall(r"^\s+(?:buf\d+ = )?(triton_\w+)\.run\(", call, re.M)
def kind(n):
    m = re.match(r"dp_([a-z]+(?:_[a-z]+)?)", n)
    if not m: return None
    k = m.group(1)
    for pre in ("norm_sq", "per_sample", "stored", "strides", "margin", "clipped", "kept", "clip", "noise", "scale"):
        if k.startswith(pre): return pre
    return k
counts = collections.Counter(); ex = {}
for l in launches:
    ks = sorted({kind(n) for n in defs.get(l, []) if kind(n)})
    key = "+".join(ks) if ks else ("model" if defs.get(l) else "?")
    counts[key] += 1; ex.setdefault(key, defs.get(l, [])[:6])
for k, v in counts.most_common(): print(v, k, ex[k][:4])
print(len(launches), "launches")
