# r1rm: two commands do all the set-up on a fresh machine.
#   make demo   create the virtual environment, install, run the main job on the embedded default
#   make test   create/update the environment, install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
R1RM   := $(VENV)/bin/r1rm
STAMP  := $(VENV)/.installed
DEMO   ?= out/demo
TORCH  ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install wheel test test-fast test-vllm demo demo-model demo-data demo-eval-base demo-sft demo-rl demo-vote demo-report bench gpu-check ablation-stability transfer lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the wheels this machine holds on disk (override TORCH= elsewhere)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,deepspeed]"
	@touch $(STAMP)

install: $(STAMP)

# the wheel (dist/r1rm-*.whl) with the built-in recipes inside (r1rm/_recipes, from recipes/)
wheel: install
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q tests/unit

# the vLLM tests (tests/with_vllm) in their own environment: vLLM's CPU build pins another torch and
# transformers (scripts/vllm_venv.sh; reused while its inputs are unchanged). On a CUDA machine:
# VLLM_PACKAGE=vllm make test-vllm
VLLM_VENV ?= .venv-vllm
test-vllm:
	bash scripts/vllm_venv.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/with_vllm

# ---- the main job on the embedded default (tiny model, synthetic colour task)
# the demo's model has 8 attention heads: with 4 (the tiny default) and batch 8, SFT stalled on a
# plateau for some seeds and CPU kernels (docs/results/2026-12-05-demo-robustness.md)
# SEED: the model's initial weights and the training seeds (the data stay the same); SFT_ARGS / RL_ARGS:
# extra `key=value` overrides (scripts/demo_sweep.py varies them)
SEED ?= 0
DEMO_MODEL_FLAGS ?= --heads 8
SFT_ARGS ?=
RL_ARGS ?=
# The demo's numerics pinned: DEMO_THREADS threads, and PyTorch (ATen), MKL (conditional numerical
# reproducibility) and oneDNN on their AVX2 code paths, so every x86-64 CPU with AVX2 runs the same
# kernels and repeats the recorded numbers to the digit (about 16 % slower SFT steps than AVX-512
# here). DEMO_PIN=0 lets the libraries pick (the spread that gives: docs/results/2026-12-06-demo-robustness.md).
DEMO_THREADS ?= 2
DEMO_PIN ?= 1
ifeq ($(DEMO_PIN),1)
DEMO_KERNELS := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
endif
DEMO_R1RM = env OMP_NUM_THREADS=$(DEMO_THREADS) MKL_NUM_THREADS=$(DEMO_THREADS) $(DEMO_KERNELS) $(R1RM)
$(DEMO)/model/config.json: | install
	$(DEMO_R1RM) tiny-model $(DEMO_MODEL_FLAGS) --seed $(SEED) $(DEMO)/model

# the 4-head tiny default, which the transfer and stability miniatures were measured with
BASE4 ?= out/tiny4
$(BASE4)/model/config.json: | install
	$(R1RM) tiny-model $(BASE4)/model

# the demo's recipes: data with a flawed simulated teacher and a validation split, SFT that
# learns the task and the teacher's flaw, the strong RL recipe keeping its best validation
# checkpoint (docs/training.md, "The tiny demo")
DEMO_SYNTH ?= recipes/tiny/synth_flawed_teacher.yaml
DEMO_SFT   ?= recipes/tiny/sft_demo.yaml
DEMO_RL    ?= recipes/tiny/rl_demo.yaml

$(DEMO)/data/train.jsonl: recipes/tiny/synth.yaml $(DEMO_SYNTH) | install
	$(DEMO_R1RM) synth --recipe $(DEMO_SYNTH) output_dir=$(DEMO)/data

# build-data (clean mode): the raw synthetic files validated, deduplicated, balanced, shuffled and
# sharded into the set RL reads ($(DEMO)/build, with manifest.json; SFT reads train.jsonl in its
# generated order, whose trajectory docs/results/2026-12-05-demo-robustness.md records)
$(DEMO)/build/manifest.json: $(DEMO)/data/train.jsonl recipes/tiny/build_demo.yaml
	$(DEMO_R1RM) build-data --recipe recipes/tiny/build_demo.yaml output_dir=$(DEMO)/build \
	  "build.sources=[{name: synthetic-colour, format: canonical, path: $(DEMO)/data/train.jsonl}]"

demo-model: $(DEMO)/model/config.json
demo-data: $(DEMO)/data/train.jsonl $(DEMO)/build/manifest.json
	$(DEMO_R1RM) check-data $(DEMO)/data/train.jsonl $(DEMO)/data/val.jsonl $(DEMO)/data/eval.jsonl

EVAL = $(DEMO_R1RM) eval --recipe recipes/tiny/eval.yaml data.eval=[$(DEMO)/data/eval.jsonl]

# untrained baseline on the held-out set, both orders
demo-eval-base: demo-model demo-data
	$(EVAL) model.path=$(DEMO)/model output_dir=$(DEMO)/eval_base

demo-sft: demo-eval-base
	$(DEMO_R1RM) sft --recipe $(DEMO_SFT) model.path=$(DEMO)/model data.train=[$(DEMO)/data/train.jsonl] output_dir=$(DEMO)/sft seed=$(SEED) $(SFT_ARGS)
	$(EVAL) model.path=$(DEMO)/sft/model output_dir=$(DEMO)/eval_sft

# RL keeps its best checkpoint on the validation split (rl/best); the held-out eval and the vote score it
demo-rl: demo-sft
	$(DEMO_R1RM) rl --recipe $(DEMO_RL) model.path=$(DEMO)/sft/model data.train=[$(DEMO)/build] data.eval=[$(DEMO)/data/val.jsonl] output_dir=$(DEMO)/rl seed=$(SEED) $(RL_ARGS)
	$(EVAL) model.path=$(DEMO)/rl/best output_dir=$(DEMO)/eval_rl

# test-time scaling of the final model: 5 samples per item and order, then the voting curve
demo-vote: demo-rl
	$(DEMO_R1RM) eval --recipe recipes/tiny/vote.yaml data.eval=[$(DEMO)/data/eval.jsonl] model.path=$(DEMO)/rl/best output_dir=$(DEMO)/vote
	$(DEMO_R1RM) vote --recipe recipes/tiny/vote.yaml output_dir=$(DEMO)/vote

# the before/after table (out/demo/report.md) and training curves (out/demo/curves.png)
demo-report: demo-vote
	$(PY) scripts/demo_report.py $(DEMO)

demo: demo-report

bench: install
	$(PY) bench/eval_speed.py
	$(PY) bench/sft_speed.py
	# TRL is a benchmark-only dependency (its GRPOTrainer is the baseline of bench/rl_vs_trl.py)
	$(PY) -c "import trl" 2>/dev/null || $(PY) -m pip install -q "trl>=1.0"
	$(PY) bench/rl_vs_trl.py
	# r1rm judge --serve under 1 / 8 / 64 concurrent clients against a one-request-at-a-time loop
	$(PY) bench/serve_load.py
	# vLLM against hf (eval, RL rollouts) in vLLM's own environment (scripts/vllm_venv.sh, as make test-vllm)
	bash scripts/vllm_venv.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python bench/vllm_vs_hf.py

# GPU checks and benchmarks: bf16 SFT / RL steps of a ~0.39B random Qwen2.5-VL-shaped model, eval
# throughput, SFT MFU -> out/gpu_check/results.json, results.md (needs a CUDA GPU; see the script's docstring)
gpu-check: install
	$(PY) bench/gpu_check.py --preset mid --device cuda

# MSRL transfer in miniature: text -> image and text -> caption -> image vs image-only with the same image budget
# (recipes/tiny/transfer.yaml, transfer_caption.yaml)
TR = out/transfer
transfer: $(BASE4)/model/config.json
	$(R1RM) synth --recipe recipes/tiny/synth.yaml output_dir=$(TR)/text data.synthetic.modality=text data.synthetic.n=12000
	$(R1RM) synth --recipe recipes/tiny/synth.yaml output_dir=$(TR)/image data.synthetic.n=1000
	$(R1RM) sft --recipe recipes/tiny/transfer.yaml model.path=$(BASE4)/model data.train=[$(TR)/image/train.jsonl] output_dir=$(TR)/image_only
	$(R1RM) sft --recipe recipes/tiny/transfer.yaml model.path=$(BASE4)/model data.train=[$(TR)/text/train.jsonl] output_dir=$(TR)/text_sft sft.max_steps=1000
	$(R1RM) sft --recipe recipes/tiny/transfer.yaml model.path=$(TR)/text_sft/model data.train=[$(TR)/image/train.jsonl] output_dir=$(TR)/text_then_image
	# MSRL's caption stage: RL on the captions of the same 1,000 image pairs (+ text replay 4:1), then the image stage
	$(R1RM) build-data --recipe recipes/tiny/transfer_caption.yaml output_dir=$(TR)/caption_data
	$(R1RM) rl --recipe recipes/tiny/transfer_caption.yaml model.path=$(TR)/text_sft/model data.train=[$(TR)/caption_data] output_dir=$(TR)/text_caption
	$(R1RM) sft --recipe recipes/tiny/transfer.yaml model.path=$(TR)/text_caption/model data.train=[$(TR)/image/train.jsonl] output_dir=$(TR)/text_caption_image
	for m in image_only text_sft text_then_image text_caption text_caption_image; do \
	  $(R1RM) eval --recipe recipes/tiny/eval.yaml model.path=$(TR)/$$m/model data.eval=[$(TR)/image/eval.jsonl] output_dir=$(TR)/eval_$$m || exit 1; done

# R1-Reward Table 6 in miniature: reinforce_pp / no filter / no Pre-CLIP / stable_reinforce under stress
# (injected engine log-prob gaps and reward outliers, a large SGD step: recipes/tiny/ablation_stability.yaml),
# from a policy SFT-trained on the perfect teacher's traces (recipes/tiny/synth.yaml, sft.yaml). The tiny
# SFT's outcome depends on its seed and on the CPU's numerics (0 %, 90 % or 100 % held-out from the same
# recipe), so the script tries SFT seeds in order and keeps the first between 80 and 95 % (out/ablation/base/
# base.json), or stops with exit 2 saying what each seed got. --jobs 2: two one-thread RL runs at once (~28 min)
ABL = out/ablation
ablation-stability: | $(BASE4)/model/config.json
	$(PY) scripts/ablation_stability.py --recipe recipes/tiny/ablation_stability.yaml --base $(ABL)/base \
	  --base-model $(BASE4)/model --base-seeds 0 1 2 3 4 5 --base-min-strict 0.80 --base-max-strict 0.95 \
	  output_dir=$(ABL)/stability --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 2

lint: install
	$(VENV)/bin/ruff check r1rm tests

clean:
	rm -rf out
