#!/usr/bin/env bash
# The GPU check (issue 3): validate and time a prebuilt gemma-embed on a GPU host that has python3
# with torch, transformers and sentence-transformers, but no Rust toolchain, no network and no
# real weights. Prepare the binary first with tools/gpu-check-prepare.sh (it lands in .gpu/).
#
#   tools/gpu-check.sh [--quick] [--cpu-only] [--bin PATH] [--work DIR] [--budget SECONDS]
#                      [--only GROUP,...] [--variants NAME,...]
#
# Stages (each under its own time limit; a failing stage does not stop the later ones, but the
# exit status is 1 if any stage failed):
#   1. a full-size random-weight EmbeddingGemma with the real config (tools/gpu/make_random_model.py)
#   2. the card's ceilings (copy bandwidth, bf16 matmul rate) measured with torch -> $OUT/ceilings.json;
#      gemma-embed check-kernels: every kernel against its CPU twin, timed, and the card's L2
#      read rate; the families after a fault or hang rerun one per process      -> $OUT/kernels.json
#   3. end-to-end parity of one packed batch of 22 lengths (1..2048): CUDA vs CPU backend vs
#      sentence-transformers float32 on the GPU, cosine >= 0.9995 per vector; the CUDA run
#      with the card's default kernels and once with each candidate choice (see `variants`
#      below: GEMMA_EMBED_MLP=fused; off sm_90 GEMMA_EMBED_BRANCH=bf16; on sm_90
#      GEMMA_EMBED_MLP=tma, =wgmma and =wgmma-wide, GEMMA_EMBED_QKV=tma and =wgmma,
#      GEMMA_EMBED_BRANCH=tma and =fused, GEMMA_EMBED_ATTENTION=flash-tma-free and =flash-tma, and the
#      former defaults GEMMA_EMBED_ATTENTION=flash and GEMMA_EMBED_BRANCH=f32; then the
#      candidates that passed check-kernels together; a variant whose kernel did not run in
#      check-kernels is skipped)
#                                                                                 -> $OUT/parity.json
#   4. throughput at 128, 512, 2048 tokens and a mixed batch, gemma-embed (CUDA, default and
#      every candidate) vs sentence-transformers bf16 + SDPA on the same card; the default at
#      smaller batch budgets (512 and mixed, 8192..32768 tokens)                  -> $OUT/bench*.json
#   5. where the forward's GPU time goes: gemma-embed profile (every operation timed with CUDA
#      events) with the default kernels and with the passing candidates together -> $OUT/profile*.json
#   6. the HTTP server under load: gemma-embed serve on the same backend, gemma-embed-loadgen
#      (many concurrent connections, every answer checked against the text's lone embedding),
#      then SIGTERM and a clean exit                                             -> $OUT/serve.json
#   7. the corpus job: gemma-embed embed over a corpus cut from the repository's text (with the
#      real tokenizer when .gpu/ has it), timed against its own forward time, then killed at its
#      first checkpoint and resumed; the resumed output must match   -> $OUT/index.json
#   8. a short summary table, printed last.
#
# --only runs the stages of some groups (and always stage 1): kernels (stage 2), parity (3), bench
# (4), profile (5), serve (6), index (7); e.g. a second device call after a kernel fix:
# `--only kernels,parity`. --variants runs only the named candidate variants (names as
# `tools/gpu/candidates.py list` prints them; `combined` for the candidates that passed, together;
# "" for none) in the parity, bench and profile stages; `combined` needs the kernels group, and
# --variants a CUDA run. Both are checked against the card before anything runs. Without the
# kernels group every variant named runs, and the profile stage profiles the last one named (none
# without --variants).
# --cpu-only runs the same pipeline without CUDA (our CPU backend vs sentence-transformers float32
# on the CPU, cos >= 0.99999): the local dry run. --quick shortens the parity lengths (<= 513) and
# the timed workloads. Each stage has its own time limit, and all together keep within --budget
# seconds (default 480; 1200 with --cpu-only). Everything lands in $OUT (default:
# $TMPDIR/gemma-embed-gpu-check/out): gpu-check.log, summary.txt and results.tar.gz, which holds
# the stages' JSON files named above (a device call returns at most 8 files from $OUT, named in
# letters, digits, '.', '_' and '-'; the variants' files are more, and the last one's name has '+').
set -u -o pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/.gpu/gemma-embed"
work="${TMPDIR:-/tmp}/gemma-embed-gpu-check"
quick=0
cpu_only=0
budget=""
only=kernels,parity,bench,profile,serve,index
variants_filter=()
python="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --budget) budget="$2"; shift ;;
        --cpu-only) cpu_only=1 ;;
        --bin) bin="$2"; shift ;;
        --only) only="$2"; shift ;;
        --variants) variants_filter=(--variants "$2"); shift ;;
        --work) work="$2"; shift ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
out="${OUT:-$work/out}"
IFS=, read -ra groups <<< "$only"
[ ${#groups[@]} -gt 0 ] || { echo "gpu-check: --only names no group" >&2; exit 2; }
for group in "${groups[@]}"; do
    case "$group" in
        kernels|parity|bench|profile|serve|index) ;;
        *) echo "gpu-check: unknown group '$group' in --only (kernels, parity, bench, profile, serve, index)" >&2; exit 2 ;;
    esac
done
# selected GROUP: whether --only names the group.
selected() { [[ ",$only," == *",$1,"* ]]; }
# Whether the card runs the sm_90-only candidates, asked before anything runs.
sm90_flag=()
[ $cpu_only = 0 ] && nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | grep -q '^9\.0' \
    && sm90_flag=(--sm90)
# The card's candidate variants (those --variants names): one line each, NAME<TAB>ENV<TAB>KERNELS.
# A variant this card has no candidate of fails here, before any device time is spent.
listing=""
[ $cpu_only = 0 ] && { listing=$("$python" "$repo/tools/gpu/candidates.py" list "${sm90_flag[@]}" \
    "${variants_filter[@]}") || exit 2; }
if [ ${#variants_filter[@]} -gt 0 ]; then
    [ $cpu_only = 0 ] || { echo "gpu-check: --variants needs a CUDA run (the CPU run has no candidates)" >&2; exit 2; }
    if [[ ",${variants_filter[1]}," == *,combined,* ]] && ! selected kernels; then
        echo "gpu-check: --variants combined needs the kernels group: the candidates combined are those that" \
            "passed this run's check-kernels" >&2
        exit 2
    fi
fi
# Nothing from an earlier run may stand in for this run's results.
rm -rf "$work/model" "$work/index" "$work/parity-ids.jsonl" "$work/cuda.npy" "$work"/variant-*.npy "$work/cpu.npy" "$work/st.npy"
(cd "$out" 2>/dev/null && rm -f gpu-check.log ceilings.json kernels.json parity.json bench.json bench_variant_*.json \
    bench_budgets.json bench_reference.json profile.json profile_variant.json serve.json index.json \
    summary.txt results.tar.gz)
mkdir -p "$out" "$work"
# A device call may run 10 minutes: by default the whole check keeps within 8.
[ -n "$budget" ] || { [ $cpu_only = 1 ] && budget=1200 || budget=480; }
deadline=$(($(date +%s) + budget))
# Stage limits are sized for the GPU host; the CPU dry run's Python reference is far slower.
limit_scale=1
[ $cpu_only = 1 ] && limit_scale=4
model="$work/model"
stages="$work/stages.tsv"
: > "$stages"
failed=0
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# stage NAME LIMIT_SECONDS COMMAND...: run under a time limit (cut to what is left of the
# whole run's budget, so that the summary always gets printed), record the outcome.
stage() {
    local name="$1" limit="$2"
    shift 2
    echo
    limit=$((limit * limit_scale))
    local left=$((deadline - $(date +%s) - 20))
    if [ $left -lt 10 ]; then
        echo "=== $name: SKIPPED (the run's budget of ${budget}s is spent)"
        printf '%s\tSKIPPED\t0\n' "$name" >> "$stages"
        failed=1
        return 1
    fi
    [ $left -lt "$limit" ] && limit=$left
    echo "=== $name (limit ${limit}s): $*"
    local start rc status
    start=$(date +%s%N)
    timeout -k 10 "$limit" "$@"
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=TIMEOUT; failed=1 ;;
        *) status="FAIL(rc=$rc)"; failed=1 ;;
    esac
    printf '%s\t%s\t%d\n' "$name" "$status" $((($(date +%s%N) - start) / 1000000)) >> "$stages"
    echo "=== $name: $status"
    return $rc
}

# skip_stage NAME WHY: record a stage that was not run (the run fails, as for a failed stage).
skip_stage() {
    echo
    echo "=== $1: SKIPPED ($2)"
    printf '%s\tSKIPPED\t0\n' "$1" >> "$stages"
    failed=1
}

gemma=("$bin")
if [ $cpu_only = 1 ]; then
    backend=cpu; st_device=cpu
else
    backend=cuda; st_device=cuda
fi
if [ $quick = 1 ]; then
    parity_lengths=1,2,3,15,16,17,63,64,65,127,128,129,255,256,257,258,511,512,513
    bench_tokens=65536; bench_repeats=3; ref_tokens=16384; ref_repeats=2
else
    parity_lengths=1,2,3,15,16,17,63,64,65,127,128,129,255,256,257,258,511,512,513,1023,2047,2048
    bench_tokens=262144; bench_repeats=5; ref_tokens=65536; ref_repeats=3
fi
bench_lengths=128,512,2048
if [ $cpu_only = 1 ]; then
    # The CPU runs the same pipeline at a size it finishes in minutes.
    bench_lengths=128,512; bench_tokens=1024; bench_repeats=1; ref_tokens=1024; ref_repeats=1
fi
max_batch_tokens=65536
if [ $cpu_only = 1 ]; then
    serve_load=(--requests 60 --concurrency 4 --inputs-per-request 1 --texts 16 --tolerance 0)
else
    # Packings differ between the lone reference and the loaded run; bf16 GEMMs of other shapes
    # may round differently, hence the tolerance (the largest difference seen is reported).
    serve_load=(--requests 2000 --concurrency 64 --inputs-per-request 8 --texts 48 --tolerance 0.01)
fi
if [ $cpu_only = 1 ]; then
    # Small requests and batches (one document of ~1000 tokens each: packed together the whole
    # corpus is one batch) and a checkpoint after each, so the short CPU job can be killed mid-way.
    index_size=(--chars 24000)
    index_embed_args=(--docs-per-request 4 --max-batch-tokens 2048 --checkpoint-interval-ms 0)
else
    index_size=(--chars 16000000); index_embed_args=()
fi

main() {
echo "=== machine"
date -u +"%Y-%m-%dT%H:%M:%SZ"
uname -a
grep -m1 "model name" /proc/cpuinfo
nproc
if [ $cpu_only = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu --format=csv \
        || nvidia-smi
    # cuBLAS (and NVRTC) for our binary come from the torch environment's NVIDIA wheels.
    nvidia_libs=$("$python" - <<'EOF'
import glob, os, sys
dirs = set()
for base in sys.path:
    for name in ["libcublas.so*", "libcublasLt.so*", "libnvrtc.so*"]:
        for lib in glob.glob(os.path.join(base, "nvidia", "**", name), recursive=True):
            dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
EOF
)
    gemma=(env "LD_LIBRARY_PATH=${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$bin")
    echo "our binary runs with LD_LIBRARY_PATH=${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    (IFS=:; for d in $nvidia_libs; do ls "$d"/libcublas*.so* 2>/dev/null; done)
fi
"$python" -c 'import torch, transformers, sentence_transformers as st; print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__, "| sentence-transformers", st.__version__)'
echo "binary: $bin ($(cat "$(dirname "$bin")/build.txt" 2>/dev/null || echo "no build.txt"))"

stage make-model 120 "$python" "$repo/tools/gpu/make_random_model.py" "$model"
"${gemma[@]}" info --model "$model"

if [ $cpu_only = 0 ] && selected kernels; then
    stage ceilings 60 "$python" "$repo/tools/gpu/ceilings.py" --json "$out/ceilings.json"
    stage check-kernels 120 "${gemma[@]}" check-kernels --json "$out/kernels.json"
    # A kernel fault leaves the rest of that process unable to run anything, and a hang loses the
    # families after it: rerun those families each in a fresh process (nothing when all ran).
    stage check-kernels-isolated 120 "$python" "$repo/tools/gpu/isolate_families.py" \
        --kernels "$out/kernels.json" --timeout 45 -- "${gemma[@]}" check-kernels
fi

# Candidate kernel choices (src/backend/cuda/options.rs, not the card's default), as triples of a
# name, its environment and the kernels it brings in, from tools/gpu/candidates.py (those
# --variants names): each candidate the card runs alone (the fused MLP kernel; off sm_90 the bf16
# branch; on sm_90 the TMA and wgmma MLP kernels, the TMA and wgmma QKV kernels, the TMA and
# fused branch kernels, the TMA attention kernels, and the former defaults flash attention and f32 branch);
# last, the candidates that passed check-kernels together, the most promising option of each
# (`candidates.py passing`), which is the variant profiled. A variant whose kernel did not run in
# check-kernels (fault, hang) is skipped: it would only spend its stages' time limits, and the
# run's budget, doing the same (without a kernels.json of this run, every variant runs).
variants=()
skipped=" "
profiled=-1
if [ $cpu_only = 0 ]; then
    candidates=("$python" "$repo/tools/gpu/candidates.py")
    while IFS=$'\t' read -r name env kernels; do
        [ -n "$name" ] && variants+=("$name" "$env" "$kernels")
    done <<< "$listing"
    # With nothing combined, the variant profiled is the last one: of those --variants names, or
    # of all when check-kernels ran and nothing passed (without it, none: the card's defaults).
    if [ ${#variants[@]} -gt 0 ] && { [ ${#variants_filter[@]} -gt 0 ] || selected kernels; }; then
        profiled=$((${#variants[@]} - 3))
    fi
    passing=$("${candidates[@]}" passing --kernels "$out/kernels.json" "${sm90_flag[@]}" "${variants_filter[@]}")
    if [ -n "$passing" ]; then
        IFS=$'\t' read -r passing_name passing_env passing_kernels <<< "$passing"
        profiled=-1
        for ((i = 0; i < ${#variants[@]}; i += 3)); do
            [ "${variants[i]}" = "$passing_name" ] && profiled=$i
        done
        if [ $profiled = -1 ]; then
            profiled=${#variants[@]}
            variants+=("$passing_name" "$passing_env" "$passing_kernels")
        fi
    fi
    for ((i = 0; i < ${#variants[@]}; i += 3)); do
        # shellcheck disable=SC2086 # kernel names are words without spaces
        "${candidates[@]}" ran --kernels "$out/kernels.json" ${variants[i + 2]} || skipped+="${variants[i]} "
    done
    [ $profiled -ge 0 ] && echo "variant profiled: ${variants[profiled]} (${variants[profiled + 1]})"
fi
# stage_variant KIND I LIMIT COMMAND...: stage KIND-NAME of variant I in its environment, or
# its record as skipped (status 1) when a kernel of it did not run in check-kernels.
stage_variant() {
    local kind="$1" i="$2" limit="$3"
    shift 3
    local name=${variants[i]}
    if [[ $skipped == *" $name "* ]]; then
        skip_stage "$kind-$name" "a kernel it uses did not run in check-kernels"
        return 1
    fi
    # shellcheck disable=SC2086 # the settings are words without spaces
    stage "$kind-$name" "$limit" env ${variants[i + 1]} "$@"
    return 0
}

if selected parity; then
    ids="$work/parity-ids.jsonl"
    stage parity-ids 30 "$python" "$repo/tools/gpu/parity.py" ids --output "$ids" --lengths "$parity_lengths"
    compare_args=()
    if [ $cpu_only = 0 ]; then
        stage embed-cuda 90 "${gemma[@]}" embed --model "$model" --input "$ids" --output "$work/cuda.npy" \
            --backend cuda --max-batch-tokens 16384
        compare_args+=(--cuda "$work/cuda.npy")
        for ((i = 0; i < ${#variants[@]}; i += 3)); do
            name=${variants[i]}
            stage_variant embed-cuda $i 90 "${gemma[@]}" embed --model "$model" --input "$ids" \
                --output "$work/variant-$name.npy" --backend cuda --max-batch-tokens 16384 \
                && compare_args+=(--variant "$name=$work/variant-$name.npy")
        done
    fi
    stage embed-cpu 150 "${gemma[@]}" embed --model "$model" --input "$ids" --output "$work/cpu.npy" \
        --backend cpu --max-batch-tokens 16384
    stage reference-st-f32 180 "$python" "$repo/tools/gpu/parity.py" reference --model "$model" \
        --input "$ids" --output "$work/st.npy" --device "$st_device"
    stage parity 30 "$python" "$repo/tools/gpu/parity.py" compare --ids "$ids" "${compare_args[@]}" \
        --cpu "$work/cpu.npy" --st "$work/st.npy" --json "$out/parity.json"
fi

if selected bench; then
    stage bench 150 "${gemma[@]}" bench --model "$model" --backend "$backend" --lengths "$bench_lengths" --mixed \
        --tokens "$bench_tokens" --repeats "$bench_repeats" --warmup 1 --max-batch-tokens "$max_batch_tokens" \
        --json "$out/bench.json"
    if [ $cpu_only = 0 ]; then
        # The batch budget: smaller batches keep more of a layer's activations in L2 (50 MB on an
        # H100 SXM; a 65536-token batch's f32 residual stream alone is 200 MB) but give each GEMM
        # fewer tiles. The default kernels at smaller budgets than the bench stage's.
        stage bench-budgets 90 "${gemma[@]}" bench --model "$model" --backend cuda --lengths 512 --mixed \
            --tokens "$bench_tokens" --repeats "$bench_repeats" --warmup 1 --max-batch-tokens 8192,16384,32768 \
            --json "$out/bench_budgets.json"
        for ((i = 0; i < ${#variants[@]}; i += 3)); do
            stage_variant bench $i 150 "${gemma[@]}" bench --model "$model" --backend cuda \
                --lengths "$bench_lengths" --mixed --tokens "$bench_tokens" --repeats "$bench_repeats" \
                --warmup 1 --max-batch-tokens "$max_batch_tokens" --json "$out/bench_variant_${variants[i]}.json"
        done
    fi
    stage bench-reference 150 "$python" "$repo/tools/bench_reference.py" --model "$model" --device "$st_device" \
        --lengths "$bench_lengths" --mixed --tokens "$ref_tokens" --repeats "$ref_repeats" --warmup 1 \
        --json "$out/bench_reference.json"
fi

if [ $cpu_only = 0 ] && selected profile; then
    profile_args=(profile --model "$model" --lengths 512,2048 --mixed --batch-tokens "$max_batch_tokens" --batches 3)
    stage profile 60 "${gemma[@]}" "${profile_args[@]}" --json "$out/profile.json"
    # The candidates together: those that passed check-kernels, or else the last variant.
    [ $profiled -ge 0 ] && stage_variant profile $profiled 60 "${gemma[@]}" "${profile_args[@]}" \
        --json "$out/profile_variant.json"
fi

if selected serve; then
    stage serve 120 bash "$repo/tools/gpu/serve-check.sh" "$model" "$backend" "$out/serve.json" \
        "$work/serve.log" "$(dirname "$bin")/gemma-embed-loadgen" "${serve_load[@]}" -- "${gemma[@]}"
fi

if selected index; then
    # The corpus job as users run it (`embed`, default batch budget), with the real tokenizer where
    # gpu-check-prepare.sh packed one, then killed at its first checkpoint and resumed.
    index_tokenizer=()
    [ -f "$(dirname "$bin")/tokenizer.json.gz" ] && index_tokenizer=(--tokenizer "$(dirname "$bin")/tokenizer.json.gz")
    stage index 120 "$python" "$repo/tools/gpu/index_check.py" --model "$model" --backend "$backend" \
        "${index_tokenizer[@]}" "${index_size[@]}" --work "$work/index" --json "$out/index.json" \
        -- "${gemma[@]}" -- "${index_embed_args[@]}"
fi

echo
"$python" "$repo/tools/gpu/summary.py" --stages "$stages" --out "$out" | tee "$out/summary.txt"
[ "${PIPESTATUS[0]}" = 0 ] || failed=1
(
    shopt -s nullglob
    cd "$out" || exit 1
    results=(*.json)
    [ ${#results[@]} = 0 ] || { tar -czf results.tar.gz -- "${results[@]}" && rm -f -- "${results[@]}"; }
) || { echo "gpu-check: could not pack the JSON files into $out/results.tar.gz"; failed=1; }
return $failed
}

main 2>&1 | tee "$out/gpu-check.log"
exit "${PIPESTATUS[0]}"
