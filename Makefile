# qchat — one non-recursive Makefile.
#
#   make            build ./qchat (CUDA backend when nvcc is found, else CPU-only)
#   make check      build and run every test; ends with "N passed, N failed, N skipped"
#   make sanitize   the same suite under AddressSanitizer + UBSan (CPU-only build)
#   make fuzz       build libFuzzer targets (clang) into build/fuzz/
#   make bench      run the benchmarks (see BENCHMARKS.md)
#   make CUDA=0     force a CPU-only build
#
# Every source file under engine/, tui/, cli/ and kernels/ is picked up by
# wildcard, so adding a module needs no Makefile edit. Tests: each
# tests/test_*.c is one binary; tests/t_*.sh scripts drive the real qchat.

BUILD    ?= build
BIN      ?= qchat
CC       ?= cc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA     ?= $(if $(NVCC),1,0)
SAN      ?= 0

CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -MMD -MP -Iengine -Itui -Icli -Ikernels
LDLIBS   := -lcjson -lm -pthread
# Static where Debian ships a static archive, so the binary runs on machines that
# have only runtime libraries (the GPU test machine lacks PCRE2 and utf8proc).
LDLIBS   += -Wl,-Bstatic -lpcre2-8 -lutf8proc -Wl,-Bdynamic -lreadline -lncursesw -ltinfo

ifeq ($(SAN),1)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif

ENGINE_SRC := $(wildcard engine/*.c)
TUI_SRC    := $(wildcard tui/*.c)
CLI_SRC    := $(wildcard cli/*.c)
CU_SRC     := $(wildcard kernels/*.cu)
TEST_SRC   := $(wildcard tests/test_*.c)

ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
TUI_OBJ    := $(TUI_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

ifeq ($(CUDA),1)
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CFLAGS     += -DQC_HAVE_CUDA=1 -I$(CUDA_HOME)/include
# sm_90: H100/H200 test machines; sm_120: RTX Pro 6000 / RTX 50 (the product's
# target, compile-only until such a card is here); sm_89: RTX 4090 / Ada (named
# in the product's targets: native FP8 conversions, and no JIT of every kernel at
# a first start; +~50 s of build on 2 cores); compute_80 PTX lets Ampere JIT the
# same kernels, and compute_90 PTX (from the sm_90 compile) serves the other
# sm_90+ GPUs (B200: sm_100): JIT from compute_80 PTX there would drop the sm_90
# instructions (PDL waits, bulk copies) that the launchers assume from the
# compute capability.
NVCC_ARCH  ?= -gencode 'arch=compute_90,code=[sm_90,compute_90]' -gencode arch=compute_120,code=sm_120 \
              -gencode arch=compute_89,code=sm_89 -gencode arch=compute_80,code=compute_80
NVCCFLAGS  ?= -O3 -std=c++17 --use_fast_math -Xcompiler -Wall,-Wextra,-Werror -Ikernels -Iengine $(NVCC_ARCH)
CU_OBJ     := $(CU_SRC:%.cu=$(BUILD)/%.o)
LDLIBS     += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib -lcublasLt -lcublas -lcudart_static -ldl -lrt -lstdc++
else
CU_OBJ     :=
endif

LIB := $(BUILD)/libqchat.a

.PHONY: all check sanitize fuzz bench trace probe depbench persistbench clean
all: $(BIN)

$(BIN): $(CLI_OBJ) $(TUI_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(TUI_OBJ) $(LIB) $(LDLIBS)
	@test "$(CUDA)" = 1 || echo "note: built a CPU-only qchat (no CUDA toolkit found, or CUDA=0)"

$(LIB): $(ENGINE_OBJ) $(CU_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/kernels/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c -o $@ $<

# Test binaries link the engine library and, where they need it, the TUI modules.
$(BUILD)/tests/%: tests/%.c tests/harness.h $(LIB) $(TUI_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -Itests -o $@ $< $(filter-out $(BUILD)/tui/main.o,$(TUI_OBJ)) $(LIB) $(LDLIBS)

check: $(BIN) $(TEST_BIN)
	@BUILD=$(BUILD) QCHAT_BIN=$(CURDIR)/$(BIN) tests/run.sh

sanitize:
	QC_TIME_SCALE=4 $(MAKE) BUILD=build-san BIN=build-san/qchat SAN=1 CUDA=0 check

FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
fuzz: $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
build/fuzz/%: tests/fuzz/%.c $(ENGINE_SRC)
	@mkdir -p $(dir $@)
	clang -std=c11 -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Iengine -o $@ $< \
	    $(filter-out engine/cuda%,$(ENGINE_SRC)) -lcjson -lpcre2-8 -lutf8proc -lm -pthread

bench: qchat
	tools/bench.sh

# The kernel timeline of a run (tools/trace/kernel_trace.c: CUPTI, a
# diagnostic only; CUDA builds, not part of `all` or `check`).
trace: build/kernel_trace.so
build/kernel_trace.so: tools/trace/kernel_trace.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fPIC -shared -I$(CUDA_HOME)/include -o $@ $< \
	    -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/lib -lcupti -Wl,-rpath,'$$ORIGIN'

# Per-block timing of the quantized decode GEMVs (kernels/probe.cuh, read
# by tools/trace/blocks.py): a diagnostic build in build-probe/, not part
# of `all` or `check`.
probe:
	@test "$(CUDA)" = 1 || { echo "make probe: needs the CUDA toolkit (nvcc)"; exit 1; }
	$(MAKE) BUILD=build-probe BIN=build-probe/qchat NVCCFLAGS="$(NVCCFLAGS) -DQG_PROBE" build-probe/qchat

# The cost of one launch's dependency on the one before (tools/trace/
# depbench.cu: PDL wait, flag spin, flags per block, L2 prefetch; sm_90+, a
# diagnostic).
depbench: build/depbench
build/depbench: tools/trace/depbench.cu
	@test "$(CUDA)" = 1 || { echo "make depbench: needs the CUDA toolkit (nvcc)"; exit 1; }
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -std=c++17 -Xcompiler -Wall,-Wextra,-Werror -gencode arch=compute_90,code=sm_90 -o $@ $<

# How fast a persistent decode kernel could stream a 27B step's weights
# across grid barriers, one GEMV launch alone under other schedules, and the
# step's GEMVs as a PDL chain, and (part 5) the tiled INT4 layout against one
# interleaved by warp (tools/trace/persistbench.cu; sm_90+, a diagnostic).
persistbench: build/persistbench
build/persistbench: tools/trace/persistbench.cu kernels/gemv_q.cuh kernels/common.cuh
	@test "$(CUDA)" = 1 || { echo "make persistbench: needs the CUDA toolkit (nvcc)"; exit 1; }
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -std=c++17 -Xcompiler -Wall,-Wextra,-Werror -Ikernels -gencode arch=compute_90,code=sm_90 -o $@ $<

clean:
	rm -rf build build-san build-probe qchat

-include $(ENGINE_OBJ:.o=.d) $(TUI_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(CU_OBJ:.o=.d)
