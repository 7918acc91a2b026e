# make demo  - create .venv, install, run the whole pipeline on the bundled sample (tiny models, offline)
# make test  - create .venv, install, run the test suite
# make test-kernels - the determinism-sensitive tests again under a second kernel set (AVX2 torch and oneDNN)
# make docs  - build the documentation site (docs/, mkdocs.yml) strictly, in its own venv
# make lint  - ruff over the package, tests and benchmarks
# make bench - throughput benchmarks with paper-size random-weight models (writes bench/results.json)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := out/demo
# Real ASD weights in the box: Light-ASD's released checkpoint ships in m3ed/weights (MIT, sha256-checked).
ASD_OPTIONS := --asd-model light-asd
# The demo and the tests never reach a model hub.
export HF_HUB_OFFLINE := 1
export M3ED_CACHE ?= $(CURDIR)/.cache/m3ed

# Tests whose outputs compare computations: run again with other vectorised kernels (torch's AVX2 set,
# oneDNN capped at AVX2), so a test that holds only on one CPU's rounding fails here, not on a user's machine.
KERNEL_TESTS := tests/test_sample_digest.py tests/test_asd_throughput.py tests/test_mtcnn.py tests/test_detect_track.py \
	tests/test_asd_fast_paths.py tests/test_face_stage.py tests/test_text.py tests/test_media.py tests/test_s3fd.py \
	tests/test_shards.py tests/test_ray_engine.py tests/test_extract_pipeline.py
DOCS_VENV := .cache/docs-venv

.PHONY: install demo test test-kernels docs lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/m3ed finetune text --profile tiny --out $(DEMO)/finetune/text --epochs 1 --no-progress
	$(BIN)/m3ed finetune audio --profile tiny --out $(DEMO)/finetune/audio --epochs 1 --no-progress
	$(BIN)/m3ed-extract --profile tiny --out $(DEMO) --device cpu $(ASD_OPTIONS) --no-report \
		--text-finetuned $(DEMO)/finetune/text --audio-finetuned $(DEMO)/finetune/audio
	$(BIN)/m3ed viz-asd sampleshow_1 --features $(DEMO) --out $(DEMO)/sampleshow_1_asd.mp4
	$(BIN)/m3ed train --features $(DEMO) --model mdi --modalities l,a,v --epochs 3 --seeds 0 --out $(DEMO)/train
	$(BIN)/m3ed stats --json $(DEMO)/stats.json
	$(BIN)/m3ed report $(DEMO)   # last: the report covers the whole demo and prints its path

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-kernels: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q $(KERNEL_TESTS)

docs:
	test -x $(DOCS_VENV)/bin/mkdocs || { $(PYTHON) -m venv $(DOCS_VENV) && $(DOCS_VENV)/bin/pip install --quiet -r docs/requirements.txt; }
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check m3ed tests bench samples

bench: $(STAMP)
	$(BIN)/python bench/bench_extract.py
	$(BIN)/python bench/bench_asd.py
	$(BIN)/python bench/bench_asd_agreement.py
	$(BIN)/python bench/bench_visual.py
	$(BIN)/python bench/bench_cut.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_long.py       # a 10-minute dialogue: memory against length
	$(BIN)/python bench/bench_host.py       # host CPU per second of video outside the networks
	$(BIN)/python bench/bench_decode.py     # the ffmpeg pipe against in-process decoders (pip install av)
	$(BIN)/python bench/bench_pipeline.py   # last: prints the end-to-end table

clean:
	rm -rf $(VENV) out .cache .pytest_cache site

# make image       - build the Docker image (docker, else podman; a Debian stand-in base where no registry answers)
# make image-check - build it, extract the sample inside it as its user, compare with .venv's run (deploy/image-check.sh)
.PHONY: image image-check
image:
	deploy/image-check.sh build

image-check: $(STAMP)
	deploy/image-check.sh check
