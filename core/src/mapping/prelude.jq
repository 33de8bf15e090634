# Builtins that Ocean's jq (libjq through the PyPI `jq` package) has and jaq lacks or treats
# differently. Later definitions shadow jaq's own.

# jaq's natives, kept under private names before the definitions below shadow them.
def _jaq_setpath($p; $v): setpath($p; $v);

# Text of values as jq prints it (numbers above all: `3`, not `3.0`; `1e-05`).
def tojson: _tojson;
def tostring: _tostring;
def tonumber: _tonumber;
def @json: tojson;
def @text: tostring;
def @base64d: tostring | _base64d;

# Paths: jq creates containers through null and pads arrays; deletes from the last path back.
def setpath($p; $v):
  if ($p | length) == 0 then $v
  elif ($p[0] | type) == "object" then _jaq_setpath($p; $v)
  else $p[0] as $k
    | (if . == null then (if ($k | type) == "number" then [] else {} end) else . end) as $c
    | ($c[$k] | setpath($p[1:]; $v)) as $inner
    | if ($k | type) == "number" and ($c | type) == "array" and $k >= ($c | length)
      then $c + [range($c | length; $k) | null] + [$inner]
      else $c | .[$k] = $inner end
  end;
def delpaths($ps): reduce ($ps | sort | reverse | .[]) as $p (.;
  if ($p | length) == 0 then null else del(getpath($p)) end);
def del(f): delpaths([path(f)]);

def IN(s): any(s == .; .);
def IN(src; s): any(src == s; .);
def INDEX(stream; idx_expr): reduce stream as $row ({}; .[$row | idx_expr | tostring] |= $row);
def INDEX(idx_expr): INDEX(.[]; idx_expr);
def ascii: [.] | implode;
def leaf_paths: paths(scalars);
def toarray: if type == "array" then . else [.] end;
def tostream: path(def r: (.[]? | r), .; r) as $p | getpath($p) | reduce path(.[]?) as $q ([$p, .]; [$p + $q]);
def fromstream(f): {x: null, e: false} as $init
  | foreach f as $i ($init;
      if .e then $init else . end
      | if $i | length == 2
        then setpath(["e"]; $i[0] | length == 0) | setpath(["x"] + $i[0]; $i[1])
        else setpath(["e"]; $i[0] | length == 1) end;
      if .e then .x else empty end);
def env: $ENV;

# Dates as libjq on glibc: timegm rolls fields over, any year an int holds (dates.rs).
def mktime: _mktime;
def gmtime: _gmtime;
def strftime($format): _strftime($format);
def strptime($format): _strptime($format);

# jq prints whole seconds and reads only "%Y-%m-%dT%H:%M:%SZ".
def todateiso8601: strftime("%Y-%m-%dT%H:%M:%SZ");
def todate: todateiso8601;
def fromdateiso8601: strptime("%Y-%m-%dT%H:%M:%SZ") | mktime;
def fromdate: fromdateiso8601;
def dateadd(u; n): . + n;
def datesub(u; n): . - n;
def date: todate;

def @csv:
  if type != "array" then error("\(type) (\(tojson)) cannot be csv-formatted, only an array can be")
  else map(
    if type == "number" then tostring
    elif type == "string" then "\"" + gsub("\""; "\"\"") + "\""
    elif type == "boolean" then tostring
    elif type == "null" then ""
    else error("\(type) (\(tojson)) is not valid in a csv row") end
  ) | join(",") end;
def @tsv:
  if type != "array" then error("\(type) (\(tojson)) cannot be tsv-formatted, only an array can be")
  else map(
    if type == "number" then tostring
    elif type == "string" then gsub("\\\\"; "\\\\") | gsub("\t"; "\\t") | gsub("\n"; "\\n") | gsub("\r"; "\\r")
    elif type == "boolean" then tostring
    elif type == "null" then ""
    else error("\(type) (\(tojson)) is not valid in a tsv row") end
  ) | join("\t") end;

# Regular expressions, defined as jq 1.7/1.8 defines them, on the Oniguruma-backed native.
def match(re; mode): _match_impl(re; mode; false) | .[];
# The one-argument forms take a regex or [regex, flags]; the native dispatches on that.
def match($val): _match_impl($val; null; false) | .[];
def test(re; mode): _match_impl(re; mode; true);
def test($val): _match_impl($val; null; true);
def capture(re; mods): match(re; mods)
  | reduce (.captures | .[] | select(.name != null) | {(.name): .string}) as $pair ({}; . + $pair);
def capture($val): match($val)
  | reduce (.captures | .[] | select(.name != null) | {(.name): .string}) as $pair ({}; . + $pair);
def scan($re; $flags): match($re; "g" + $flags)
  | if (.captures | length > 0) then [.captures | .[] | .string] else .string end;
def scan($re): scan($re; null);
def _nwise($n): def n: if length <= $n then . else .[0:$n], (.[$n:] | n) end; n;
def _nwise(a; $n): a | _nwise($n);
def splits($re; flags): . as $s
  | [match($re; "g" + flags) | (.offset, .offset + .length)]
  | [0] + . + [$s | length]
  | _nwise(2)
  | $s[.[0]:.[1]];
def splits($re): splits($re; null);
def split($re; flags): [splits($re; flags)];
# Native, with the semantics of jq's definition (see regex.rs).
def sub($re; s; $flags): _sub($re; s; $flags);
def sub($re; s): sub($re; s; "");
def gsub($re; s; flags): sub($re; s; flags + "g");
def gsub($re; s): sub($re; s; "g");

# Strings, arrays and generators with jq's edge cases.
def ltrimstr($left): if startswith($left) then .[$left | length:] end;
def rtrimstr($right): if endswith($right) then .[:$right | -length] end;
def join($x): _join($x);
def to_entries: [keys_unsorted[] as $k | {key: $k, value: .[$k]}];
def from_entries: map(
    (.key // .Key // .name // .Name) as $k
    | if ($k | type) == "string" then {($k): (if has("value") then .value else .Value end)}
      else error("Cannot use \($k | type) (\($k | tojson)) as object key") end)
  | add | . //= {};
def with_entries(f): to_entries | map(f) | from_entries;
def limit($n; exp):
  if $n > 0 then label $out | foreach exp as $item ($n; . - 1; $item, if . <= 0 then break $out else empty end)
  elif $n == 0 then empty
  else error("limit doesn't support negative count") end;
def first(g): label $out | g | ., break $out;
def isempty(g): first((g | false), true);
def all(generator; condition): isempty(generator | condition and empty);
def any(generator; condition): isempty(generator | condition or empty) | not;
def all(condition): all(.[]; condition);
def any(condition): any(.[]; condition);
def all: all(.[]; .);
def any: any(.[]; .);
def last(g): reduce g as $item (null; $item);
def first: .[0];
def last: .[-1];
def unique: group_by(.) | map(.[0]);
def unique_by(f): group_by(f) | map(.[0]);
def walk(f): def w: if type == "object" then map_values(w) elif type == "array" then map(w) else . end | f; w;
