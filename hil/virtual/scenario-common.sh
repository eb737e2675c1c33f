# Helpers every rig scenario starts with (bash, in the guest). Expects BIN, REPO, OUT.
ms() { echo $(( $(date +%s%N) / 1000000 )); }
fail() { echo "FAIL: $*" | tee -a "$OUT/rig.txt"; exit 1; }

# gpio-sim: one chip labelled rig-alerts with named lines, as the board profile expects.
GPIO_CFG=/sys/kernel/config/gpio-sim/rig
rig_gpio() {
  mkdir "$GPIO_CFG" "$GPIO_CFG/bank0"
  echo 8 > "$GPIO_CFG/bank0/num_lines"
  echo rig-alerts > "$GPIO_CFG/bank0/label"
  local i=0 name
  for name in siren heartbeat horn; do
    mkdir "$GPIO_CFG/bank0/line$i"
    echo "$name" > "$GPIO_CFG/bank0/line$i/name"
    i=$((i + 1))
  done
  echo 1 > "$GPIO_CFG/live"
  GPIO_SYS=/sys/devices/platform/$(cat "$GPIO_CFG/dev_name")/$(cat "$GPIO_CFG/bank0/chip_name")
}
# The level a consumer drives on a named line, as gpio-sim sees it (the rig's readback).
line() {
  case $1 in
    siren) cat "$GPIO_SYS/sim_gpio0/value" ;;
    heartbeat) cat "$GPIO_SYS/sim_gpio1/value" ;;
    horn) cat "$GPIO_SYS/sim_gpio2/value" ;;
  esac
}
# wait_line NAME VALUE TIMEOUT_MS
wait_line() {
  local end=$(( $(ms) + $3 ))
  while [ "$(line "$1")" != "$2" ]; do
    [ "$(ms)" -gt "$end" ] && return 1
    sleep 0.01
  done
}
# onnxruntime's library, as scripts/setup left it for the host.
if [ -f "$REPO/.cache/env" ]; then set -a; . "$REPO/.cache/env"; set +a; fi
# The rig's own files (HIL_LOOPBACK: the v4l2loopback module built by hil/virtual/setup).
. "${SIDELINE_CACHE:-$REPO/.cache}/hil/env"
