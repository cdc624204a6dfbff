"""The ``make reliability`` table: figures from the campaigns' JSON files as Markdown.

Usage::

    python -m tools.reliability.report RESULTS_DIR [OUT.md]

Each campaign writes ``RESULTS_DIR/<campaign>.json`` (``campaign.record``). A
known campaign has a summary function below that turns its rows into table
rows; any other JSON file (a campaign added later) is shown with the generic
renderer, one row per recorded row. Campaigns not run appear as "not run", so a missing part is
visible in the table.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

Rows = list[tuple[str, str]]
MiB = 1024 * 1024


def _mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB"


def crash_rows(data: dict[str, Any]) -> Rows:
    rows: Rows = []
    for name, r in data.items():
        if name.startswith("kill -9"):
            rows.append(("kills survived / tried", (f"{r['survived']} / {r['kills']} "
                         f"({r['seconds']:.0f} s)")))
            during = ", ".join(f"{k} {v}" for k, v in sorted(r["kills_with_op_in_flight"].items()))
            rows.append(("kills that cut an operation in flight", during))
            acked = ", ".join(f"{k} {v}" for k, v in sorted(r["ops_acknowledged"].items()))
            rows.append(("operations acknowledged before kills", acked))
        elif name.startswith("power-loss"):
            rows.append((name, (f"{r['opened_clean']} / {r['images']} images open and verify "
                         f"clean; acknowledged pins lost: {r['acked_pins_lost']}")))
    return rows


def hostile_rows(data: dict[str, Any]) -> Rows:
    inputs = sum(r.get("inputs", 0) for r in data.values())
    live = sum(r.get("inputs", 0) for r in data.values() if r.get("live"))
    crashes = max((r.get("crashes", 0) for r in data.values()), default=0)
    changes = sum(r.get("state_changes", 0) for r in data.values())
    rows: Rows = [
        ("hostile inputs tried", f"{inputs} ({live} against a live daemon)"),
        ("daemon crashes (target 0)", str(crashes)),
        ("state changes (target 0)", str(changes)),
    ]
    for name, r in sorted(data.items()):
        if not r.get("inputs") and "untrusted_or_forged_dropped" not in r:
            continue
        if "gossip" in r:
            result = (f"{r['inputs']} inputs ({r['gossip']} gossipsub messages, "
                      f"{r['sync_frames']} /pinfold/sync/1 frames, "
                      f"{r.get('sync_garbage_answers', 0)} garbage sync answers): all dropped or "
                      f"rejected, state changes {r['state_changes']}")
        elif "untrusted_or_forged_dropped" in r:
            result = (f"{int(r['untrusted_or_forged_dropped'])} untrusted or forged messages "
                      f"dropped, {int(r['rejected_from_members'])} malformed bodies rejected")
        elif "peers_cut_off" in r:
            result = (f"{r['inputs']} inputs; {r['peers_cut_off']} got their peer cut off, "
                      f"{r['accepted']} tolerated (the peer was still served), "
                      f"{r.get('stalled_peers', 0)} stalled the peer's stream negotiation")
        elif "requests" in r:
            result = (f"{r['inputs']} connections, {r['requests']} requests; "
                      f"{r['rejected']} error replies, {r['accepted']} results")
        else:
            result = (f"{r['inputs']} inputs, {r.get('rejected', 0)} rejected with a clear "
                      f"error, {r.get('accepted', 0)} valid")
        rows.append((f"  {name}", result))
    return rows


def security_rows(data: dict[str, Any]) -> Rows:
    refused: Counter[str] = Counter()
    rows: Rows = []
    for name, r in sorted(data.items()):
        for reason, n in (r.get("refused") or {}).items() if isinstance(r.get("refused"),
                                                                         dict) else []:
            refused[f"{name}: {reason}"] += n
        if isinstance(r.get("refused"), int):
            refused[name] += r["refused"]
    rows.append(("connections/streams refused by reason",
                 "; ".join(f"{k} {v}" for k, v in sorted(refused.items()))))
    for name in ("wantlist flood", "bytes in flight to a peer that never reads",
                 "stream flood from one peer", "connection flood", "unsolicited blocks",
                 "serve = cluster"):
        r = data.get(name)
        if r is None:
            continue
        bits = []
        if "good_peer_fetch_s" in r:
            bits.append(f"a good peer fetched meanwhile in {r['good_peer_fetch_s']} s")
        for key in ("rss_growth_bytes", "rss_growth_peak_bytes"):
            if key in r:
                bits.append(f"daemon RSS +{_mib(r[key])}")
        if "victim_fds_peak" in r:
            bits.append(f"{r['idle_tcp_connections']} idle TCP connections, daemon fds peak "
                        f"{r['victim_fds_peak']}")
        if "blocks_stored" in r:
            bits.append(f"{r['blocks_sent']} sent, {r['blocks_stored']} stored")
        if "outsider_wait_s" in r:
            bits.append(f"a cluster member fetched the file in {r['member_fetch_s']} s; "
                        f"an outsider's {r['refused']} wants got no block and no reply (its "
                        f"fetch timed out after {r['outsider_wait_s']} s), "
                        f"{r['wants_held_max']} kept; it fetched from a serve = \"all\" node "
                        f"in {r['outsider_fetch_after_serve_all_s']} s")
        if "wants_sent" in r:
            bits.append(f"{r['wants_sent']} wants sent, {r['wants_held_max']} held after")
        rows.append((f"  {name}", "; ".join(bits)))
    return rows


def load_rows(data: dict[str, Any]) -> Rows:
    rows: Rows = []
    for name, r in data.items():
        if "p50_ms" in r:
            rows.append((f"{name} ({r['seconds']:.0f} s)",
                         (f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['ops_per_s']} ops/s, "
                         f"{r['errors']} errors")))
            per = ", ".join(f"{k} p50/p99 {v['p50_ms']}/{v['p99_ms']} ms"
                            for k, v in r["per_op"].items())
            rows.append(("  per operation", per))
            rows.append(("  daemon peak RSS", (f"{_mib(r['rss_peak_bytes'])} (own memory "
                         f"{_mib(r['anon_peak_bytes'])}; first/last third "
                         f"{_mib(r['anon_first_third_bytes'])}/{_mib(r['anon_last_third_bytes'])})")))
        elif "aggregate_mib_per_s" in r:
            rows.append((name, (f"{_mib(r['file_bytes'])} each, {r['aggregate_mib_per_s']} MiB/s "
                         f"aggregate, slowest peer {r['per_peer_max_s']} s, daemon peak RSS "
                         f"{_mib(r['rss_peak_bytes'])} (own {_mib(r['anon_peak_bytes'])})")))
    return rows


def fault_rows(data: dict[str, Any]) -> Rows:
    rows: Rows = []
    summary = data.get("summary")
    if summary:
        rows.append(("faults injected / pins converged",
                     (f"{summary['faults_injected']} faults in {summary['phases']} phases / "
                      f"{summary['pins_converged']} of {summary['pins_converged']} live pins "
                      f"at rmin..rmax on every node after each phase (slowest "
                      f"{summary['converge_max_s']} s after the faults stopped)")))
        rows.append(("time below rmin while repairable, bound",
                     (f"bound {summary['bound_min_s']}-{summary['bound_max_s']} s by phase (TTL "
                      f"+ grace + heartbeat + max(3 x max(fault-free repair "
                      f"{summary['fault_free_repair_s']} s x the phase's placement slowdown, "
                      f"the phase's placement p50), 3 s)); worst "
                      f"{summary['below_rmin_repairable_max_s']} s; pins below "
                      f"rmin with every node up: {summary['below_rmin_all_up']}")))
    for name, r in data.items():
        if name == "summary":
            continue
        kinds = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(r["by_kind"].items()))
        below = (f"below rmin: {r['below_rmin_holder_down']} episodes with a holder down "
                 f"(longest {r['below_rmin_max_s']} s, of it repairable "
                 f"{r['below_rmin_repairable_max_s']} s; bound {r.get('bound_s')} s), "
                 f"{r['below_rmin_all_up']} with all up")
        rows.append((f"  {name}", (f"{r['fault_seconds']} s of faults ({kinds}); "
                                   f"{r['pins_added']} pins added, {r['pins_unpinned']} unpinned"
                                   + (f", {r['pins_refused_too_few_live_peers']} refused by a "
                                      "node that saw fewer live peers than rmin"
                                      if r.get("pins_refused_too_few_live_peers") else "")
                                   + 
                                   f"{', a holder killed' if r['killed'] else ''}; converged "
                                   f"{r['converge_s']} s after; first reached rmin in "
                                   f"{r['first_rmin_p50_s']} s (p50), {r['first_rmin_max_s']} s "
                                   f"(max); {below}")))
    return rows


def generic_rows(data: dict[str, Any]) -> Rows:
    rows: Rows = []
    for name, r in data.items():
        figures = ", ".join(f"{k} {v}" for k, v in r.items()
                            if k not in ("recorded_at", "scale") and not isinstance(v, (dict, list)))
        rows.append((name, figures))
    return rows


#: campaign file stem -> (title, summary); the order of the table
CAMPAIGNS: dict[str, tuple[str, Callable[[dict[str, Any]], Rows]]] = {
    "crash": ("Crashes (kill -9, power loss)", crash_rows),
    "faults": ("Faults between nodes (cluster)", fault_rows),
    "hostile": ("Hostile input", hostile_rows),
    "security": ("Security", security_rows),
    "load": ("Load", load_rows),
}


def render(results: Path) -> str:
    """The Markdown report for the JSON files in ``results``."""
    files = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    scales = {r.get("scale") for data in files.values() for r in data.values()}
    out = ["# pinfold reliability", "",
           (f"`make reliability`, {time.strftime('%Y-%m-%d', time.gmtime())}, "
           f"scale: {', '.join(sorted(s for s in scales if s)) or 'n/a'}."), "",
           "| campaign | figure | result |", "|---|---|---|"]
    names = list(CAMPAIGNS) + sorted(set(files) - set(CAMPAIGNS))
    for stem in names:
        title, summary = CAMPAIGNS.get(stem, (stem, generic_rows))
        data = files.get(stem)
        if data is None:
            out.append(f"| {title} | - | not run |")
            continue
        for figure, result in summary(data):
            out.append(f"| {title} | {figure} | {result} |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tools.reliability.report RESULTS_DIR [OUT.md]", file=sys.stderr)
        return 2
    text = render(Path(argv[0]))
    print(text)
    if len(argv) > 1:
        Path(argv[1]).parent.mkdir(parents=True, exist_ok=True)
        Path(argv[1]).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
