#!/bin/bash
# compare, 3 strategies x 5 folds, with 1 then 2 workers (--trials-in-parallel) on three
# cases: the wall seconds and whether compare.csv's scores are the same (#19 items 3-4).
# The data are bench/defaults.py's (run it once with --out /tmp/bench/img to make them):
#   OMP_NUM_THREADS=1 bash bench/compare_workers.sh
set -e
HS=${HEADSTART:-.venv/bin/headstart}
C=/tmp/bench/img/clipart/data
SRC=file:/tmp/bench/img/clipart/source-small-cnn
W=${OUT:-/tmp/bench/compare-workers}; rm -rf $W; mkdir -p $W
run() { # name data source extra...
  local name=$1 data=$2 src=$3; shift 3
  for w in 1 2; do
    s=$(date +%s.%N)
    $HS compare $data --source $src "$@" --strategies linear,full,scratch --folds 5 --trials-in-parallel $w --out $W/$name-$w -q
    e=$(date +%s.%N)
    echo "$name workers=$w wall=$(echo "$e - $s" | bc)"
  done
  python3 - "$W/$name-1/compare.csv" "$W/$name-2/compare.csv" <<'PY'
import csv, sys
def rows(p):
    return [{k: v for k, v in r.items() if "second" not in k} for r in csv.DictReader(open(p))]
print("  same scores:", rows(sys.argv[1]) == rows(sys.argv[2]))
PY
}
run clipart-source $C/source builtin:small-cnn --weights none
run clipart-target $C/train $SRC
run digits /tmp/bench/img/digits-similar/data/train builtin:digits-cnn
