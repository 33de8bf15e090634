"""Ocean's mapping algorithm (port_ocean JQEntityProcessor), written out plainly so that the
golden corpus's expected entities come from libjq exactly as Ocean would compute them."""
import json
import os
import re

import jq
import yaml

PATH_RE = re.compile(r"\.[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def rewrite_single_quotes(expression):
    out = []
    n = len(expression)
    for i, c in enumerate(expression):
        if c != "'":
            out.append(c)
            continue
        before = expression[i - 1] if i > 0 else None
        after = expression[i + 1] if i + 1 < n else None
        opens = (before is None or before.isspace()) and not (after is not None and (after.isspace() or after == '"'))
        closes = not (before is not None and (before.isspace() or before == '"')) and (after is None or after.isspace())
        out.append('"' if opens or closes else "'")
    return "".join(out)


def search(data, expression):
    """First output; None when the expression yields nothing or fails (Ocean's _search)."""
    try:
        return jq.compile(rewrite_single_quotes(expression)).input_value(data).first()
    except Exception:
        return None


def map_object(data, obj):
    result = {}
    for key, value in obj.items():
        if isinstance(value, list):
            result[key] = [map_object(data, item) for item in value]
        elif isinstance(value, dict):
            result[key] = map_object(data, value)
        else:
            result[key] = search(data, value)
    return result


def expand(resource, item):
    port = resource["port"]
    items_to_parse = port.get("itemsToParse")
    if not items_to_parse:
        return [item]
    items = search(item, items_to_parse)
    if not isinstance(items, list):
        return []
    name = port.get("itemsToParseName", "item")
    parent = item
    if port.get("itemsToParseTopLevelTransform", True):
        match = PATH_RE.search(items_to_parse)
        target = match.group(0) if match else "."
        parent = search(item, f". | del({target})")
    return [dict(parent, **{name: element}) for element in items]


def map_item(resource, item):
    """Entities (or {"error": ...}) Ocean produces for one raw item of this resource."""
    out = []
    for data in expand(resource, item):
        try:
            selected = jq.compile(rewrite_single_quotes(resource["selector"]["query"])).input_value(data).first()
        except StopIteration:
            selected = None
        except Exception:
            selected = "error"
        if not isinstance(selected, bool):
            out.append({"selector_error": True})
            continue
        if not selected:
            continue
        entity = map_object(data, resource["port"]["entity"]["mappings"])
        if not entity.get("identifier") or not entity.get("blueprint"):
            out.append({"dropped": True})
            continue
        out.append({"entity": entity})
    return out


def write_expected(case):
    with open(os.path.join(case, "mapping.yaml")) as f:
        config = yaml.safe_load(f)
    kind = open(os.path.join(case, "kind")).read().strip()
    lines = []
    with open(os.path.join(case, "input.jsonl")) as f:
        for number, line in enumerate(f):
            if not line.strip():
                continue
            item = json.loads(line)
            for index, resource in enumerate(config["resources"]):
                if resource["kind"] != kind:
                    continue
                for result in map_item(resource, item):
                    lines.append(dict(result, item=number, resource=index))
    with open(os.path.join(case, "expected.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
    return len(lines)
