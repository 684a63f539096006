#!/usr/bin/env bash
# Replays scenarios through `offpeak simulate` and has the independent checker
# (shared/tools/check_schedule.py, beside the repository in development and CI) validate and
# price each schedule. Fails if a schedule breaks a rule or if the cost, carbon or kWh that
# offpeak printed differ from the checker's by a cent (0.1 kg, 0.1 kWh) or more.
#   scripts/check-scenarios.sh [SCENARIO_DIR...]   (default: every scenario in ../shared/scenarios)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
if [ ! -f "$shared/tools/check_schedule.py" ]; then
  echo "check-scenarios: no checker at $shared/tools; skipped"
  exit 0
fi
python3 -c "import pandas, numpy, yaml" 2>/dev/null || python3 -m pip install --quiet pandas numpy pyyaml
cargo build --release --locked --bin offpeak
dirs=("$@")
[ ${#dirs[@]} -eq 0 ] && dirs=("$shared"/scenarios/*/)
out=$(mktemp -d)
status=0
for dir in "${dirs[@]}"; do
  name=$(basename "$dir")
  ./target/release/offpeak simulate "$dir" --out "$out/$name.json" --json --no-progress --no-baseline > "$out/$name.summary.json"
  python3 "$shared/tools/check_schedule.py" "$dir" "$out/$name.json" --json > "$out/$name.check.json" || true
  python3 - "$out/$name.summary.json" "$out/$name.check.json" "$name" <<'PY' || status=1
import json, sys
ours = json.load(open(sys.argv[1]))["result"]
chk = json.load(open(sys.argv[2]))
s, name = chk["schedule"], sys.argv[3]
print(f"{name}: valid={chk['valid']} capture={chk['capture']:.3f} saving_vs_asap={chk['saving_vs_asap']:.3f} "
      f"late={s['late']} (asap {chk['asap']['late']}) cost={s['cost']:.2f} carbon_kg={s['carbon_kg']:.1f} kwh={s['kwh']:.1f}")
bad = not chk["valid"]
for key, tol in (("cost", 0.005), ("carbon_kg", 0.05), ("kwh", 0.05)):
    if abs(ours[key] - s[key]) >= tol:
        print(f"  {key}: offpeak printed {ours[key]:.4f}, the checker computes {s[key]:.4f}")
        bad = True
sys.exit(1 if bad else 0)
PY
done
exit $status
