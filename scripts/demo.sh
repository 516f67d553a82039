#!/usr/bin/env bash
# The main job on a fresh machine, end to end: installs deps, builds, starts the embedded Kafka
# broker, trains a head from labeled reviews (`bertstream train`, published to the heads topic),
# runs `bertstream worker` (GPU when present, else CPU), streams reviews through it, prints a
# table of scored reviews and the throughput, and stops everything cleanly.
#
#   scripts/demo.sh [--reviews N] [--train N] [--keep]
#
# Model: models/bert-base-uncased (scripts/fetch-model.sh) when present; otherwise a randomly
# initialised model from `bertstream init-model` (the output says so: its scores mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

N_REVIEWS=300
N_TRAIN=600
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --reviews) N_REVIEWS=$2; shift 2 ;;
    --train) N_TRAIN=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m== %s\033[0m\n' "$*"; }
PY=/usr/bin/python3

say "dependencies"
bash scripts/install-deps.sh
say "build"
cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
BIN=$ROOT/build/bertstream

WORK=$(mktemp -d /tmp/bertstream-demo.XXXXXX)
BROKER_PID=""
WORKER_PID=""
cleanup() {
  for pid in $WORKER_PID $BROKER_PID; do
    if kill -TERM "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
  done
  if [ "$KEEP" = 1 ]; then echo "demo files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

DATA=${BERTSTREAM_DATA:-$ROOT/../shared/data}
HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then HAVE_GPU=1; fi

say "model"
RANDOM_WEIGHTS=0
if [ -f models/bert-base-uncased/config.json ]; then
  MODEL=$ROOT/models/bert-base-uncased
  echo "using the real model in $MODEL"
else
  RANDOM_WEIGHTS=1
  preset=tiny
  [ "$HAVE_GPU" = 1 ] && preset=base
  vocab_args=()
  [ -f "$DATA/bert-base-uncased/vocab.txt" ] && vocab_args=(--vocab "$DATA/bert-base-uncased/vocab.txt")
  MODEL=$WORK/model
  "$BIN" init-model --preset "$preset" --seed 1 --out "$MODEL" "${vocab_args[@]}" >/dev/null
  echo "NOTE: no real model under models/ (scripts/fetch-model.sh brings bert-base-uncased)."
  echo "NOTE: using a RANDOMLY INITIALISED '$preset' BERT: the pipeline is real, the scores mean nothing."
fi

say "reviews"
REVIEWS_TSV=$DATA/imdb/reviews.tsv
[ -f "$REVIEWS_TSV" ] || REVIEWS_TSV=$ROOT/scripts/sample-reviews.tsv
echo "from $REVIEWS_TSV"
# label<TAB>text, split on \n only (texts may hold U+0085); first N_TRAIN labeled, next N_REVIEWS to score
"$PY" - "$REVIEWS_TSV" "$N_TRAIN" "$N_REVIEWS" "$WORK" <<'PYEOF'
import json, sys
path, n_train, n_rev, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = open(path, encoding="utf-8", newline="\n").read().split("\n")[1:]
rows = [r.split("\t", 1) for r in rows if "\t" in r]
train, score = rows[:n_train], rows[n_train:n_train + n_rev]
if len(score) < n_rev:  # a small sample file: score what there is, train on all of it
    train, score = rows, rows[:n_rev]
with open(f"{work}/labeled.jsonl", "w") as f:
    for i, (label, text) in enumerate(train):
        f.write(json.dumps({"review_id": f"train-{i}", "text": text, "label": int(label)}) + "\n")
with open(f"{work}/reviews.jsonl", "w") as f, open(f"{work}/truth.json", "w") as t:
    truth = {}
    for i, (label, text) in enumerate(score):
        rid = f"review-{i}"
        truth[rid] = int(label)
        f.write(json.dumps({"review_id": rid, "text": text, "source": "demo"}) + "\n")
    json.dump(truth, t)
print(f"{len(train)} labeled reviews for training, {len(score)} reviews to score")
PYEOF

say "broker"
"$BIN" broker --topics reviews:4,review-scores:4,reviews-dlq:1,bertstream-heads:1,reviews-labeled:1 \
   >"$WORK/broker.out" 2>"$WORK/broker.log" </dev/null &
BROKER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/broker.out" ] && break; sleep 0.1; done
BOOT=$(head -n 1 "$WORK/broker.out")
[ -n "$BOOT" ] || { echo "demo.sh: the broker did not start (see $WORK/broker.log)" >&2; exit 1; }
echo "bootstrap servers: $BOOT"

COMMON=(-o "kafka.bootstrap.servers=$BOOT" -o "model.dir=$MODEL" -o "model.device=auto"
        -o "http.listen=127.0.0.1:0" -o "log.level=warn")
if [ "$RANDOM_WEIGHTS" = 1 ]; then
  # A random encoder's pooler output barely varies between texts; the mean of its (random but
  # distinct) token embeddings still carries which words a review uses, so a head can learn from it.
  COMMON+=(-o model.feature=mean -o train.feature=mean)
  echo "NOTE: random weights: features are mean-pooled (the notebook's pooler features are used with real weights)"
fi

say "train a head (bertstream train: labeled topic -> AdamW -> heads topic)"
"$BIN" produce --brokers "$BOOT" --topic reviews-labeled --schema labeled_review <"$WORK/labeled.jsonl"
"$BIN" train --config config/trainer.yaml "${COMMON[@]}" -o "train.cache_dir=$WORK/cache" \
  -o "train.out_dir=$WORK/heads" -o head.file= | tee "$WORK/train.json"

say "worker (head from the heads topic; Ctrl-C stops the demo cleanly)"
"$BIN" worker --config config/worker.yaml "${COMMON[@]}" -o head.file= -o head.wait_ms=30000 \
  2>"$WORK/worker.log" &
WORKER_PID=$!
START=$(date +%s.%N)
"$BIN" produce --brokers "$BOOT" --topic reviews --schema review <"$WORK/reviews.jsonl"
"$BIN" consume --brokers "$BOOT" --topic review-scores --schema review_score --from-beginning \
  --max "$N_REVIEWS" --timeout-ms 120000 >"$WORK/scores.jsonl"
END=$(date +%s.%N)
kill -TERM "$WORKER_PID"
wait "$WORKER_PID" && echo "worker stopped cleanly (exit 0)"
WORKER_PID=""

say "results"
"$PY" - "$WORK" "$START" "$END" "$RANDOM_WEIGHTS" <<'PYEOF'
import json, sys
work, start, end, random_weights = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
truth = json.load(open(f"{work}/truth.json"))
rows = [json.loads(l) for l in open(f"{work}/scores.jsonl")]
texts = {json.loads(l)["review_id"]: json.loads(l)["text"] for l in open(f"{work}/reviews.jsonl")}
print(f"{'review_id':<12} {'label':<9} {'prob':>6} {'tokens':>6} {'head':>4}  text")
for r in rows[:15]:
    t = texts.get(r["review_id"], "").replace("\n", " ")
    print(f"{r['review_id']:<12} {r['label']:<9} {r['probability']:6.3f} {r['tokens']:6d} "
          f"{r['head_version']:4d}  {t[:60]}")
n = len(rows)
correct = sum(1 for r in rows if (r["label"] == "positive") == (truth.get(r["review_id"]) == 1))
ts = sorted(r["scored_at"] for r in rows)
span = (ts[-1] - ts[0]) / 1000.0 if len(ts) > 1 else 0.0
print(f"... {n} reviews scored of {len(truth)} produced, {len(rows) - len(set(r['review_id'] for r in rows))} duplicates")
print(f"worker: {n / span:.0f} reviews/s while scoring (first to last scored_at); "
      f"{n / (end - start):.0f} reviews/s wall clock including start-up and the head wait"
      if span > 0 else f"{n / (end - start):.0f} reviews/s wall clock")
print(f"accuracy against the IMDB labels: {correct / max(n, 1):.1%}"
      + ("  (random weights: meaningless)" if random_weights else ""))
PYEOF
