#!/bin/bash
# Submits a sweep as a SLURM array job (slurm/sweep.sbatch, one task per command line of the sweep file) and,
# with --dependency=afterok, the evaluation of all its runs (slurm/eval.sbatch). Run it from the repository root.
#
#     slurm/submit.sh slurm/sweeps/pendulum.txt
#     slurm/submit.sh --throttle 8 slurm/sweeps/paper.txt        # at most 8 tasks at once
#     slurm/submit.sh --dry-run slurm/sweeps/paper.txt           # show tasks and sbatch commands only
#
# Resources are the variables at the top of sweep.sbatch and eval.sbatch (environment variables of the same
# names override them: GPUS=0 CPUS=2 MEM=4G TIME=1:00:00 PARTITION=... ACCOUNT=...). PYTHON (default: python)
# runs the sweep-file parser here and the training in the jobs.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: slurm/submit.sh [--throttle N] [--tasks SPEC] [--no-eval | --eval-only] [--dry-run] SWEEP_FILE

  SWEEP_FILE      one training command per line (slurm/sweeps/*.txt; format: python slurm/sweepfile.py --help)
  --throttle N    run at most N tasks of the sweep at the same time (sbatch --array=...%N)
  --tasks SPEC    submit only these task ids, e.g. 0-3,7 (default: all; see python slurm/sweepfile.py list FILE)
  --no-eval       do not submit the evaluation job
  --eval-only     submit only the evaluation of the sweep's runs (those with a checkpoint), starting now
  --dry-run       print the task list and the sbatch commands; submit nothing
EOF
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHOWN=$(dirname "${BASH_SOURCE[0]}")  # the slurm/ folder as the user reached it, for the hints printed below
PYTHON=${PYTHON:-python}
export PYTHON
throttle="" tasks="" eval=1 train=1 dry=0 sweep_file=""
while (( $# )); do
    case $1 in
        --throttle) throttle=${2-}; shift 2 || { usage >&2; exit 2; } ;;
        --throttle=*) throttle=${1#*=}; shift ;;
        --tasks) tasks=${2-}; shift 2 || { usage >&2; exit 2; } ;;
        --tasks=*) tasks=${1#*=}; shift ;;
        --no-eval) eval=0; shift ;;
        --eval-only) train=0; shift ;;
        --dry-run) dry=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [[ -z $sweep_file ]] || { echo "error: one sweep file at a time (got $sweep_file and $1)" >&2; exit 2; }
           sweep_file=$1; shift ;;
    esac
done
[[ -n $sweep_file ]] || { usage >&2; exit 2; }
if [[ -n $throttle && ! $throttle =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --throttle takes a positive whole number (got '$throttle')" >&2; exit 2
fi
if [[ -n $tasks && ! $tasks =~ ^[0-9][0-9,:-]*$ ]]; then
    echo "error: --tasks takes task ids such as 0-3,7 (got '$tasks')" >&2; exit 2
fi

# The number of tasks comes from the same parser that the tasks use to find their line.
count=$("$PYTHON" "$HERE/sweepfile.py" check "$sweep_file") || exit 2
name=$(basename "$sweep_file" .txt)

# Tasks read their line when they start (and again when requeued): they read a frozen copy, so that editing the
# sweep file while the array runs cannot shift lines under them. Same content, same copy.
digest=$(sha1sum "$sweep_file" | cut -c1-8)
snapshot="logs/sweeps/$digest/$name.txt"

resource_options() {  # the sbatch options of the ">>> resources" block at the top of an .sbatch file
    (
        eval "$(sed -n '/^# >>> resources/,/^# <<< resources/p' "$1")"
        if [[ -n ${GPUS-} && ${GPUS-} != 0 ]]; then echo "--gres=gpu:$GPUS"; fi
        if [[ -n ${CPUS-} ]]; then echo "--cpus-per-task=$CPUS"; fi
        if [[ -n ${MEM-} ]]; then echo "--mem=$MEM"; fi
        if [[ -n ${TIME-} ]]; then echo "--time=$TIME"; fi
        if [[ -n ${PARTITION-} ]]; then echo "--partition=$PARTITION"; fi
        if [[ -n ${ACCOUNT-} ]]; then echo "--account=$ACCOUNT"; fi
        for option in ${EXTRA_SBATCH-}; do echo "$option"; done
    )
}
mapfile -t sweep_opts < <(resource_options "$HERE/sweep.sbatch")
mapfile -t eval_opts < <(resource_options "$HERE/eval.sbatch")

array="${tasks:-0-$((count - 1))}${throttle:+%$throttle}"
export SWEEP_HELPER="$HERE/sweepfile.py"
sweep_cmd=(sbatch --parsable --export=ALL --array="$array" --job-name="sweep-$name" "${sweep_opts[@]}"
           "$HERE/sweep.sbatch" "$snapshot")
eval_cmd=(sbatch --parsable --export=ALL --job-name="eval-$name" "${eval_opts[@]}"
          --dependency=afterok:JOBID --kill-on-invalid-dep=yes "$HERE/eval.sbatch" "$snapshot")

if (( ! train )); then
    (( eval )) || { echo "error: --no-eval and --eval-only leave nothing to submit" >&2; exit 2; }
    eval_cmd=(sbatch --parsable --export=ALL --job-name="eval-$name" "${eval_opts[@]}" "$HERE/eval.sbatch" "$snapshot")
fi

if (( dry )); then
    echo "sweep $sweep_file: $count task(s)"
    "$PYTHON" "$HERE/sweepfile.py" list "$sweep_file"
    echo "would copy $sweep_file to $snapshot and run:"
    (( train )) && echo "  ${sweep_cmd[*]}"
    (( eval )) && echo "  ${eval_cmd[*]}"
    exit 0
fi

mkdir -p logs "logs/sweeps/$digest" runs
cp "$sweep_file" "$snapshot.tmp" && mv "$snapshot.tmp" "$snapshot"
if (( ! train )); then
    ejob=$("${eval_cmd[@]}")
    ejob=${ejob%%;*}
    echo "submitted evaluation of sweep $name: job $ejob (log logs/${ejob}.out); results in eval/$name/"
    echo "follow:    squeue -j $ejob    tail -f logs/${ejob}.out"
    exit 0
fi
job=$("${sweep_cmd[@]}")
job=${job%%;*}
echo "submitted sweep $name: $count task(s) as array job $job (array $array)"
echo "  tasks:   $PYTHON $SHOWN/sweepfile.py list $snapshot   (task -> line -> run folder)"
echo "  runs:    runs/${name}__*   (TensorBoard: tensorboard --logdir runs)"
echo "  logs:    logs/${job}_<task>.out"
if (( eval )); then
    eval_cmd=("${eval_cmd[@]/JOBID/$job}")
    ejob=$("${eval_cmd[@]}")
    ejob=${ejob%%;*}
    echo "submitted evaluation: job $ejob, starts when every task of $job has succeeded (cancelled if one fails)"
    echo "  log:     logs/${ejob}.out"
    echo "  results: eval/$name/"
    echo "follow:    squeue -j $job,$ejob    sacct -j $job,$ejob -X    tail -f logs/${job}_0.out"
else
    echo "follow:    squeue -j $job    sacct -j $job -X    tail -f logs/${job}_0.out"
fi
