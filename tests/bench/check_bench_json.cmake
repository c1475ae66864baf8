# Runs RUNNER (a command with its arguments separated by '|': the lowbit binary and "bench", or
# python and bench/pytorch_reference.py) with a tiny `train` and a 2-iteration `kernel conv`,
# each with --json, and checks that every output line is a JSON object with the documented
# fields. NAME is the expected "framework" field. Usage:
#   cmake "-DRUNNER=build/tools/lowbit|bench" -DNAME=lowbit -P check_bench_json.cmake
cmake_minimum_required(VERSION 3.25)
string(REPLACE "|" ";" runner "${RUNNER}")

# Runs `runner args...`, parses each line of stdout and checks `fields` in every object; the
# objects' "kernel" values (or "train") are returned in `out_kinds`.
function(check_run out_kinds fields)
  set(args ${ARGN})
  execute_process(COMMAND ${runner} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  string(REPLACE ";" " " cmd "${runner};${args}")
  if(NOT rc EQUAL 0 AND "${err}" MATCHES "no bf16 kernel")
    message(STATUS "${cmd}: skipped, this CPU has no bf16 convolution (oneDNN needs AVX-512)")
    set(${out_kinds} skipped PARENT_SCOPE)
    return()
  endif()
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${cmd}: exit code ${rc}\nstdout:\n${out}\nstderr:\n${err}")
  endif()
  # One object per line; ';' would split a CMake list, and no field holds one.
  string(REPLACE ";" "_" out "${out}")
  string(REGEX REPLACE "\n$" "" out "${out}")
  string(REPLACE "\n" ";" lines "${out}")
  set(kinds)
  foreach(line IN LISTS lines)
    string(JSON type ERROR_VARIABLE jerr TYPE "${line}")
    if(jerr OR NOT type STREQUAL "OBJECT")
      message(FATAL_ERROR "${cmd}: not a JSON object: '${line}' (${jerr})")
    endif()
    foreach(f IN LISTS fields)
      string(JSON v ERROR_VARIABLE ferr GET "${line}" ${f})
      if(ferr)
        message(FATAL_ERROR "${cmd}: field '${f}' missing in ${line}")
      endif()
    endforeach()
    string(JSON fw GET "${line}" framework)
    if(NOT fw STREQUAL NAME)
      message(FATAL_ERROR "${cmd}: framework is '${fw}', expected '${NAME}'")
    endif()
    string(JSON bench GET "${line}" bench)
    if(bench STREQUAL "kernel")
      string(JSON kernel GET "${line}" kernel)
      list(APPEND kinds ${kernel})
      if(kernel MATCHES "^conv_")
        string(JSON v GET "${line}" gflop_per_s)
      elseif(kernel STREQUAL "copy")
        string(JSON v GET "${line}" gb_per_s)
      endif()
    else()
      list(APPEND kinds ${bench})
    endif()
  endforeach()
  set(${out_kinds} ${kinds} PARENT_SCOPE)
endfunction()

check_run(kinds "model;batch;hw;cin;mode;device;threads;images_per_s;ms_per_step;peak_mem_bytes;steps"
          train --model resnet20 --batch 8 --hw 28 --cin 1 --steps 2 --warmup 1 --device cpu --json)
if(NOT kinds STREQUAL "train")
  message(FATAL_ERROR "bench train --json printed '${kinds}', expected one train object")
endif()
# QAT steps (LSQ and uniform, 4 bits): the same fields plus the quantizer and bits.
foreach(q lsq uniform)
  check_run(kinds "model;mode;images_per_s;ms_per_step;quantizer;bits"
            train --model resnet20 --batch 8 --hw 28 --cin 1 --steps 2 --warmup 1 --device cpu
            --mode qat --quantizer ${q} --bits 4 --json)
  if(NOT kinds STREQUAL "train")
    message(FATAL_ERROR "bench train --mode qat --json printed '${kinds}', expected one train object")
  endif()
endforeach()

# QAT under amp: bf16 (how users train): the mode stays qat, amp says bf16.
check_run(kinds "model;mode;amp;images_per_s;quantizer;bits"
          train --model resnet20 --batch 8 --hw 28 --cin 1 --steps 2 --warmup 1 --device cpu
          --mode qat --amp bf16 --quantizer lsq --bits 4 --json)
if(NOT kinds MATCHES "^(train|skipped)$")
  message(FATAL_ERROR "bench train --mode qat --amp bf16 --json printed '${kinds}', expected one train object")
endif()

# Mixed precision (amp: bf16, autocast) on the CPU.
check_run(kinds "model;mode;images_per_s;ms_per_step;final_loss"
          train --model resnet20 --batch 8 --hw 28 --cin 1 --steps 2 --warmup 1 --device cpu --mode bf16 --json)
if(NOT kinds MATCHES "^(train|skipped)$")
  message(FATAL_ERROR "bench train --mode bf16 --json printed '${kinds}', expected one train object")
endif()

check_run(kinds "kernel;device;dtype;threads;size;iters;ms;ms_min;copy_gb_per_s"
          kernel conv --iters 2 --device cpu --json)
if(NOT kinds STREQUAL "copy;conv_forward;conv_backward")
  message(FATAL_ERROR "bench kernel conv --json printed '${kinds}', expected copy, conv_forward, "
                      "conv_backward")
endif()
check_run(kinds "kernel;device;dtype;threads;size;iters;ms;ms_min;bytes;gb_per_s"
          kernel fake_quant --size 4096,64 --iters 2 --device cpu --json)
set(want copy)
foreach(g per_tensor per_channel)
  foreach(q fake_quant lsq)
    list(APPEND want ${q}_${g}_forward ${q}_${g}_backward)
  endforeach()
endforeach()
if(NOT kinds STREQUAL want)
  message(FATAL_ERROR "bench kernel fake_quant --json printed '${kinds}', expected '${want}'")
endif()
message(STATUS "${NAME}: bench train (fp32, qat, bf16) and bench kernel conv print the documented JSON, as does bench kernel fake_quant")
