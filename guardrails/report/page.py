"""The HTML report's page: one Jinja2 template, its stylesheet and its sorting script.

Everything the page needs is in the file (no fonts, images, scripts or styles from anywhere
else), and its Content-Security-Policy allows exactly this stylesheet and this script by hash:
even markup that slipped past escaping could neither run nor fetch anything. The script only
reorders rows and sets attributes; it never builds markup from text. `#sort=KEY` (or
`#sort=-KEY`, descending) in the address sorts the table, so a sorted view can be linked.
"""

STYLE = """
:root { color-scheme: light; --ink: #1b1f24; --muted: #57606a; --line: #d0d7de;
  --bad: #b42318; --bad-bg: #fef3f2; --warn: #9a6700; --head: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif;
  color: var(--ink); margin: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 6px; }
.meta { color: var(--muted); margin: 2px 0; overflow-wrap: anywhere; }
code { font: 12px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.card .n { display: block; font-size: 26px; font-weight: 650; }
.card.bad .n { color: var(--bad); }
.card.alert { border-color: var(--bad); background: var(--bad-bg); }
.card.alert .n { color: var(--bad); }
.counts { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
table { border-collapse: collapse; }
caption { text-align: left; font-weight: 650; padding: 4px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: left;
  vertical-align: top; }
thead th { background: var(--head); position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
#mailboxes { width: 100%; table-layout: fixed; }
#mailboxes td { overflow-wrap: anywhere; }
col.mailbox, col.owner { width: 15%; }
col.unit, col.approval, col.by { width: 8%; }
col.on { width: 10%; }
col.findings { width: 18%; }
col.hijack { width: 13%; }
th button { font: inherit; font-weight: 650; color: inherit; background: none; border: 0;
  padding: 0; cursor: pointer; text-align: left; }
th button::after { content: " \\2195"; color: var(--muted); }
th[aria-sort="ascending"] button::after { content: " \\2191"; color: var(--ink); }
th[aria-sort="descending"] button::after { content: " \\2193"; color: var(--ink); }
.id { color: var(--muted); font: 11px ui-monospace, Menlo, Consolas, monospace;
  overflow-wrap: anywhere; }
.muted { color: var(--muted); }
ul.findings { margin: 0; padding-left: 16px; }
tr.suspect td { background: var(--bad-bg); }
tr.suspect td:first-child { box-shadow: inset 4px 0 0 var(--bad); }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px;
  font-weight: 650; color: #fff; background: var(--bad); white-space: nowrap; }
.audit { color: var(--warn); font-size: 12px; }
.hint { color: var(--muted); margin: 0 0 8px; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { margin: 0; font-size: 9pt; }
  .hint, th button::after { display: none; }
  thead th { position: static; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
  .cards, .counts { break-inside: avoid; }
  tr.suspect td { background: none; }
  tr.suspect td:first-child { box-shadow: none; border-left: 3pt solid #000; }
  .badge { color: #000; background: none; border: 1pt solid #000; }
}
"""

SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("mailboxes");
  if (!table || !table.tHead || !table.tBodies.length) { return; }
  var heads = table.tHead.rows[0].cells;
  var body = table.tBodies[0];
  var current = { key: null, descending: false };
  function value(row, index, numeric) {
    var cell = row.cells[index];
    var text = cell.getAttribute("data-sort");
    if (text === null) { text = cell.textContent.trim().toLowerCase(); }
    return numeric ? Number(text) || 0 : text;
  }
  function sort(key, descending) {
    var index = -1;
    for (var i = 0; i < heads.length; i++) {
      heads[i].removeAttribute("aria-sort");
      if (heads[i].getAttribute("data-key") === key) { index = i; }
    }
    if (index < 0) { return; }
    var numeric = heads[index].getAttribute("data-type") === "number";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, index, numeric), y = value(b, index, numeric);
      var order = numeric ? x - y : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    heads[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
    table.setAttribute("data-sorted-by", (descending ? "-" : "") + key);
    current = { key: key, descending: descending };
  }
  function fromAddress() {
    var match = /^#sort=(-?)([a-z_]+)$/.exec(window.location.hash);
    if (match) { sort(match[2], match[1] === "-"); }
  }
  Array.prototype.forEach.call(heads, function (head) {
    var button = head.querySelector("button");
    if (!button) { return; }
    button.addEventListener("click", function () {
      var key = head.getAttribute("data-key");
      var descending = current.key === key && !current.descending;
      window.location.hash = "sort=" + (descending ? "-" : "") + key;
    });
  });
  window.addEventListener("hashchange", fromAddress);
  fromAddress();
})();
"""

TEMPLATE = """
{%- macro findings(items) -%}
<td data-sort="{{ items|length }}">{% if items %}<ul class="findings">
{%- for f in items %}<li><strong>{{ f.label }}</strong>: {{ f.actual }} &rarr; {{ f.expected }}
{%- if not f.enforced %} <span class="audit">(audit)</span>{% endif %}</li>{% endfor %}
</ul>{% else %}<span class="muted">no finding</span>{% endif %}</td>
{%- endmacro -%}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mailbox compliance report: {{ dataverse_url }}</title>
<style>{{ style }}</style>
</head>
<body>
<header>
<h1>Mailbox compliance report</h1>
<p class="meta">{{ dataverse_url }} &middot; organization {{ organization_id }}
 &middot; generated {{ generated_at }} &middot; read-only: nothing was changed</p>
<p class="meta">Policy <code>{{ policy }}</code>
{%- if preview %} compared with the candidate <code>{{ candidate_policy }}</code>{% endif %}.
 Accepted values: {{ accepted_values }}</p>
</header>

<section class="cards" aria-label="Summary">
<div class="card"><span class="n">{{ "{:,}".format(scanned) }}</span>mailboxes scanned</div>
<div class="card bad"><span class="n">{{ "{:,}".format(current.non_compliant) }}</span>
non-compliant</div>
<div class="card{{ ' alert' if hijack_suspects }}">
<span class="n">{{ "{:,}".format(hijack_suspects) }}</span>hijack suspects</div>
<div class="card"><span class="n">{{ "{:,}".format(current.ignored) }}</span>
exempt or out of scope</div>
{%- if preview %}
<div class="card"><span class="n">{{ "{:,}".format(candidate.non_compliant) }}</span>
non-compliant under the candidate ({{ newly }} newly, {{ no_longer }} no longer)</div>
{%- endif %}
{%- if owner_not_found %}
<div class="card"><span class="n">{{ "{:,}".format(owner_not_found) }}</span>
owner not in the directory</div>
{%- endif %}
</section>

<section class="counts" aria-label="Counts">
<table>
<caption>By rule (mailboxes)</caption>
<thead><tr><th scope="col">Rule</th><th scope="col" class="num">Current</th>
{%- if preview %}<th scope="col" class="num">Candidate</th>{% endif %}</tr></thead>
<tbody>
{%- for rule in rules %}
<tr><td>{{ rule.name }}</td><td class="num">{{ rule.current }}</td>
{%- if preview %}<td class="num">{{ rule.candidate }}</td>{% endif %}</tr>
{%- else %}
<tr><td colspan="3" class="muted">nothing non-compliant</td></tr>
{%- endfor %}
</tbody>
</table>
<table>
<caption>By business unit (mailboxes)</caption>
<thead><tr><th scope="col">Business unit</th><th scope="col" class="num">Non-compliant</th>
<th scope="col" class="num">Hijack suspects</th>
{%- if preview %}<th scope="col" class="num">Candidate</th>{% endif %}</tr></thead>
<tbody>
{%- for unit in units %}
<tr><td>{{ unit.name }}</td><td class="num">{{ unit.current }}</td>
<td class="num">{{ unit.hijack }}</td>
{%- if preview %}<td class="num">{{ unit.candidate }}</td>{% endif %}</tr>
{%- else %}
<tr><td colspan="4" class="muted">nothing to report</td></tr>
{%- endfor %}
</tbody>
</table>
<table>
<caption>By column (findings)</caption>
<thead><tr><th scope="col">Column</th><th scope="col" class="num">Current</th>
{%- if preview %}<th scope="col" class="num">Candidate</th>{% endif %}</tr></thead>
<tbody>
{%- for column in columns %}
<tr><td>{{ column.label }}</td><td class="num">{{ column.current }}</td>
{%- if preview %}<td class="num">{{ column.candidate }}</td>{% endif %}</tr>
{%- else %}
<tr><td colspan="3" class="muted">no findings</td></tr>
{%- endfor %}
</tbody>
</table>
</section>

<section aria-label="Mailboxes">
<h2>Mailboxes ({{ entries|length }})</h2>
<p class="hint">Select a column heading to sort. Hijack suspects (an approved address that is
not the owner's own) come first.</p>
<table id="mailboxes">
<colgroup><col class="mailbox"><col class="owner"><col class="unit"><col class="findings">
{%- if preview %}<col class="findings">{% endif %}<col class="approval"><col class="by">
<col class="on"><col class="hijack"></colgroup>
<thead><tr>
<th scope="col" data-key="mailbox_name"><button type="button">Mailbox</button></th>
<th scope="col" data-key="owner"><button type="button">Owner</button></th>
<th scope="col" data-key="business_unit"><button type="button">Business unit</button></th>
<th scope="col" data-key="findings" data-type="number"><button type="button">
{{- 'Current policy' if preview else 'Findings' }}</button></th>
{%- if preview %}
<th scope="col" data-key="candidate" data-type="number"><button type="button">Candidate
</button></th>
{%- endif %}
<th scope="col" data-key="approval"><button type="button">Approval</button></th>
<th scope="col" data-key="modified_by"><button type="button">Modified by</button></th>
<th scope="col" data-key="modified_on"><button type="button">Modified on</button></th>
<th scope="col" data-key="hijack_suspect"><button type="button">Hijack</button></th>
</tr></thead>
<tbody>
{%- for e in entries %}
<tr data-mailbox-id="{{ e.id }}"{% if e.hijack %} class="suspect"{% endif %}>
<td data-sort="{{ e.name|lower }}">{{ e.name or '(no name)' }}
<br><span class="id">{{ e.id }}</span></td>
<td data-sort="{{ (e.owner_name or e.owner_email or '')|lower }}">{{ e.owner_name or '' }}
{%- if e.owner_email %}<br><span class="muted">{{ e.owner_email }}</span>{% endif %}
{%- if e.queue %} <span class="muted">(queue)</span>{% endif %}</td>
<td>{{ e.business_unit }}</td>
{{ findings(e.findings) }}
{%- if preview %}{{ findings(e.candidate) }}{% endif %}
<td>{{ e.approval or '' }}</td>
<td>{{ e.modified_by }}</td>
<td data-sort="{{ e.modified_on }}">{{ e.modified_on_text }}</td>
<td data-sort="{{ 0 if e.hijack else 1 }}">{% if e.hijack %}
<span class="badge">Hijack suspect</span><br>approved <code>{{ e.hijack.address }}</code>;
 the owner's is <code>{{ e.hijack.own or '(none known)' }}</code>{% endif %}</td>
</tr>
{%- else %}
<tr><td colspan="9" class="muted">Every mailbox is compliant and none is a hijack suspect.</td></tr>
{%- endfor %}
</tbody>
</table>
</section>
<script>{{ script }}</script>
</body>
</html>
"""
