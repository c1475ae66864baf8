# LowbitCuda.cmake: decides whether lowbit builds its CUDA backend, and sets it up if so.
#
# Include it from the top-level CMakeLists.txt right after project(), before any
# add_subdirectory(): it may call enable_language(CUDA), which must happen at the top level,
# and it adds directory-wide CUDA compile options.
#
#   LOWBIT_CUDA=AUTO (default)  build CUDA when nvcc, cuBLAS, cuDNN 9 and NCCL are all found;
#                               one status line says what was found where, or what is missing.
#   LOWBIT_CUDA=ON              the same search, but a missing piece is a FATAL_ERROR.
#   LOWBIT_CUDA=OFF             never looks.
#
# Results (normal variables in the including scope, i.e. the top level):
#   LOWBIT_WITH_CUDA            ON or OFF.
#   targets, only when ON:      CUDA::cudart, CUDA::cublas, CUDA::cublasLt (FindCUDAToolkit),
#                               lowbit::cudnn, lowbit::nccl (INTERFACE IMPORTED GLOBAL: headers,
#                               library, and CUDA::cudart because both headers include it).
#   LOWBIT_CUDNN_INCLUDE_DIR, LOWBIT_CUDNN_LIBRARY, LOWBIT_CUDNN_VERSION,
#   LOWBIT_NCCL_INCLUDE_DIR,  LOWBIT_NCCL_LIBRARY,  LOWBIT_NCCL_VERSION  (cache / normal vars).
#
# cuDNN and NCCL are looked for, in this order, under LOWBIT_CUDNN_ROOT / LOWBIT_NCCL_ROOT
# (cache) and CUDNN_ROOT / NCCL_ROOT (environment), the CUDA toolkit, CMAKE_PREFIX_PATH,
# /usr/local and /usr, and last the pip wheels nvidia-cudnn-cu* and nvidia-nccl-cu*
# (<site-packages>/nvidia/{cudnn,nccl}/{include,lib}) of every python3 on PATH. The wheels ship
# only versioned libraries (libcudnn.so.9, libnccl.so.2), so those names are searched too, per
# directory (NAMES_PER_DIR) so that directory order, not name order, decides.
#
# Surprises worth knowing:
# - CMAKE_CUDA_ARCHITECTURES is chosen here, before enable_language(CUDA), because CMake
#   otherwise fills in the compiler's default. It is set as a normal variable, so it is chosen
#   again on every configure; -DCMAKE_CUDA_ARCHITECTURES=... or env CUDAARCHS override it.
#   With a GPU visible to nvidia-smi: 80-real;90-real;90-virtual (our targets plus PTX for
#   newer GPUs). Without one (CI, development machines): 80-real only, the quickest build that
#   still compiles every kernel for real.
# - ccache becomes the compiler launcher for CXX and CUDA when found, unless a launcher is
#   already set (cache or environment), also when LOWBIT_CUDA=OFF.
# - CUDA 13 keeps Thrust/CUB/libcu++ in include/cccl. nvcc adds that itself; we also add it to
#   CUDA::cudart so host-compiled .cpp files in cuda/ see the same headers.

include_guard(GLOBAL)

set(LOWBIT_CUDA "AUTO" CACHE STRING "Build the CUDA backend: AUTO, ON or OFF")
set_property(CACHE LOWBIT_CUDA PROPERTY STRINGS AUTO ON OFF)
set(LOWBIT_CUDNN_ROOT "" CACHE PATH
    "Where to look first for cuDNN (a prefix with include/ and lib/, or a site-packages dir)")
set(LOWBIT_NCCL_ROOT "" CACHE PATH
    "Where to look first for NCCL (a prefix with include/ and lib/, or a site-packages dir)")

string(TOUPPER "${LOWBIT_CUDA}" _lowbit_cuda_mode)
if(_lowbit_cuda_mode MATCHES "^(ON|YES|TRUE|Y|1)$")
  set(_lowbit_cuda_mode ON)
elseif(_lowbit_cuda_mode MATCHES "^(OFF|NO|FALSE|N|0)$")
  set(_lowbit_cuda_mode OFF)
elseif(NOT _lowbit_cuda_mode STREQUAL "AUTO")
  message(FATAL_ERROR "LOWBIT_CUDA is '${LOWBIT_CUDA}'; allowed values are AUTO, ON and OFF")
endif()

# --- ccache ---------------------------------------------------------------------------------
find_program(LOWBIT_CCACHE_PROGRAM ccache)
mark_as_advanced(LOWBIT_CCACHE_PROGRAM)
if(LOWBIT_CCACHE_PROGRAM)
  foreach(_lowbit_lang IN ITEMS CXX CUDA)
    if(NOT DEFINED CMAKE_${_lowbit_lang}_COMPILER_LAUNCHER
       AND NOT DEFINED ENV{CMAKE_${_lowbit_lang}_COMPILER_LAUNCHER})
      set(CMAKE_${_lowbit_lang}_COMPILER_LAUNCHER "${LOWBIT_CCACHE_PROGRAM}")
    endif()
  endforeach()
endif()

if(_lowbit_cuda_mode STREQUAL "OFF")
  set(LOWBIT_WITH_CUDA OFF)
  message(STATUS "lowbit: CUDA backend OFF (LOWBIT_CUDA=OFF, nothing searched)")
  unset(_lowbit_cuda_mode)
  return()
endif()

# --- helpers --------------------------------------------------------------------------------

# Site-packages directories of every python3 on PATH (plus the active virtualenv/conda env),
# and sys.path entries that hold an nvidia/ folder (so PYTHONPATH works too). Only
# directories that contain nvidia/ are returned: that is where the nvidia-* wheels unpack.
function(_lowbit_python_site_dirs out_var)
  set(_pythons "")
  if(CMAKE_HOST_WIN32)
    set(_path_list "$ENV{PATH}")
  else()
    string(REPLACE ":" ";" _path_list "$ENV{PATH}")
  endif()
  foreach(_dir IN LISTS _path_list)
    if(_dir AND EXISTS "${_dir}/python3" AND NOT IS_DIRECTORY "${_dir}/python3")
      list(APPEND _pythons "${_dir}/python3")
    endif()
  endforeach()
  foreach(_env IN ITEMS VIRTUAL_ENV CONDA_PREFIX)
    if(DEFINED ENV{${_env}} AND EXISTS "$ENV{${_env}}/bin/python3")
      list(APPEND _pythons "$ENV{${_env}}/bin/python3")
    endif()
  endforeach()
  if(Python3_EXECUTABLE AND EXISTS "${Python3_EXECUTABLE}")
    list(APPEND _pythons "${Python3_EXECUTABLE}")
  endif()
  # /usr/bin/python3 and /bin/python3 are one file on merged-/usr systems: ask it once.
  # (pyenv shims resolve to the shim script, which still answers for the selected python.)
  set(_seen "")
  set(_sites "")
  set(_code [=[
import os, site, sys
d = list(getattr(site, "getsitepackages", lambda: [])())
try:
    d.append(site.getusersitepackages())
except Exception:
    pass
d += [p for p in sys.path if p and os.path.isdir(os.path.join(p, "nvidia"))]
print(";".join(d))
]=])
  foreach(_py IN LISTS _pythons)
    get_filename_component(_real "${_py}" REALPATH)
    if(_real IN_LIST _seen)
      continue()
    endif()
    list(APPEND _seen "${_real}")
    execute_process(COMMAND "${_py}" -c "${_code}"
                    OUTPUT_VARIABLE _out RESULT_VARIABLE _rc ERROR_QUIET
                    OUTPUT_STRIP_TRAILING_WHITESPACE TIMEOUT 20)
    if(_rc EQUAL 0)
      list(APPEND _sites ${_out})
    endif()
  endforeach()
  set(_result "")
  foreach(_site IN LISTS _sites)
    if(_site AND IS_DIRECTORY "${_site}/nvidia")
      file(TO_CMAKE_PATH "${_site}" _site)
      list(APPEND _result "${_site}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _result)
  set(${out_var} "${_result}" PARENT_SCOPE)
endfunction()

# Reads "#define <PREFIX>MAJOR 9" style numbers from a header into "9.19.0".
function(_lowbit_header_version out_var header prefix)
  set(_version "")
  if(EXISTS "${header}")
    file(STRINGS "${header}" _lines REGEX "^#define ${prefix}(MAJOR|MINOR|PATCH|PATCHLEVEL) +[0-9]+")
    foreach(_part IN ITEMS MAJOR MINOR PATCH PATCHLEVEL)
      foreach(_line IN LISTS _lines)
        if(_line MATCHES "^#define ${prefix}${_part} +([0-9]+)")
          if(_version STREQUAL "")
            set(_version "${CMAKE_MATCH_1}")
          else()
            string(APPEND _version ".${CMAKE_MATCH_1}")
          endif()
        endif()
      endforeach()
    endforeach()
  endif()
  set(${out_var} "${_version}" PARENT_SCOPE)
endfunction()

# Finds one library (header + shared library) and sets LOWBIT_<VAR>_INCLUDE_DIR and
# LOWBIT_<VAR>_LIBRARY in the cache. The library is looked for next to the header first, so
# the two come from one installation whenever possible.
#   _lowbit_find_cuda_lib(CUDNN HEADER cudnn.h NAMES cudnn libcudnn.so.9
#                         ROOTS <first> ... PATHS <last> ...)
function(_lowbit_find_cuda_lib var)
  cmake_parse_arguments(PARSE_ARGV 1 _a "" "HEADER" "NAMES;ROOTS;PATHS")
  set(_arch_suffix "")
  if(CMAKE_LIBRARY_ARCHITECTURE)
    set(_arch_suffix "${CMAKE_LIBRARY_ARCHITECTURE}")
  endif()
  # A different root than last time: forget the cached answer.
  set(_key "${_a_ROOTS}")
  if(DEFINED _LOWBIT_${var}_SEARCH_KEY AND NOT "${_LOWBIT_${var}_SEARCH_KEY}" STREQUAL "${_key}")
    unset(LOWBIT_${var}_INCLUDE_DIR CACHE)
    unset(LOWBIT_${var}_LIBRARY CACHE)
  endif()
  set(_LOWBIT_${var}_SEARCH_KEY "${_key}" CACHE INTERNAL "")

  find_path(LOWBIT_${var}_INCLUDE_DIR NAMES ${_a_HEADER}
            HINTS ${_a_ROOTS}
            PATHS /usr/local /usr ${_a_PATHS}
            PATH_SUFFIXES include include/${_arch_suffix})
  mark_as_advanced(LOWBIT_${var}_INCLUDE_DIR)
  if(NOT LOWBIT_${var}_INCLUDE_DIR)
    return()
  endif()

  # Root of the header's installation: strip include/ or include/<arch>/.
  set(_root "${LOWBIT_${var}_INCLUDE_DIR}")
  if(_arch_suffix AND _root MATCHES "/${_arch_suffix}$")
    get_filename_component(_root "${_root}" DIRECTORY)
  endif()
  get_filename_component(_root "${_root}" DIRECTORY)
  set(_near "")
  foreach(_sub IN ITEMS lib64 lib "lib/${_arch_suffix}" "targets/x86_64-linux/lib"
                        "targets/sbsa-linux/lib")
    if(IS_DIRECTORY "${_root}/${_sub}")
      list(APPEND _near "${_root}/${_sub}")
    endif()
  endforeach()
  if(_near)
    find_library(LOWBIT_${var}_LIBRARY NAMES ${_a_NAMES} NAMES_PER_DIR
                 PATHS ${_near} NO_DEFAULT_PATH)
  endif()
  find_library(LOWBIT_${var}_LIBRARY NAMES ${_a_NAMES} NAMES_PER_DIR
               HINTS ${_a_ROOTS}
               PATHS /usr/local /usr ${_a_PATHS}
               PATH_SUFFIXES lib64 lib lib/${_arch_suffix})
  mark_as_advanced(LOWBIT_${var}_LIBRARY)
endfunction()

# The cuNN of the pip wheel that installed <lib> ("12" for nvidia-cudnn-cu12), or "".
function(_lowbit_wheel_cuda_major out_var lib wheel)
  set(_major "")
  if(lib MATCHES "^(.*)/nvidia/[^/]+/lib/[^/]+$")
    file(GLOB _infos "${CMAKE_MATCH_1}/nvidia_${wheel}_cu*.dist-info")
    foreach(_info IN LISTS _infos)
      if(_info MATCHES "_cu([0-9]+)-[^/]*\\.dist-info$")
        set(_major "${CMAKE_MATCH_1}")
      endif()
    endforeach()
  endif()
  set(${out_var} "${_major}" PARENT_SCOPE)
endfunction()

# --- nvcc -----------------------------------------------------------------------------------
set(_lowbit_found "")
set(_lowbit_missing "")

# check_language only looks at CUDACXX and PATH; help it find a toolkit that is not on PATH.
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  find_program(_lowbit_nvcc_on_path nvcc)
  if(NOT _lowbit_nvcc_on_path)
    find_program(_lowbit_nvcc_guess nvcc NO_DEFAULT_PATH
                 PATHS "$ENV{CUDA_HOME}/bin" "$ENV{CUDA_PATH}/bin" "${CUDAToolkit_ROOT}/bin"
                       "$ENV{CUDAToolkit_ROOT}/bin" /usr/local/cuda/bin)
    if(_lowbit_nvcc_guess)
      set(CMAKE_CUDA_COMPILER "${_lowbit_nvcc_guess}" CACHE FILEPATH "CUDA compiler")
    endif()
    unset(_lowbit_nvcc_guess CACHE)
  endif()
  unset(_lowbit_nvcc_on_path CACHE)
endif()

include(CheckLanguage)
check_language(CUDA)
set(_lowbit_toolkit_roots "")
if(CMAKE_CUDA_COMPILER)
  list(APPEND _lowbit_found "nvcc (${CMAKE_CUDA_COMPILER})")
  get_filename_component(_lowbit_nvcc_real "${CMAKE_CUDA_COMPILER}" REALPATH)
  get_filename_component(_lowbit_nvcc_bin "${_lowbit_nvcc_real}" DIRECTORY)
  get_filename_component(_lowbit_nvcc_root "${_lowbit_nvcc_bin}" DIRECTORY)
  if(NOT DEFINED CUDAToolkit_ROOT AND NOT DEFINED ENV{CUDAToolkit_ROOT})
    set(CUDAToolkit_ROOT "${_lowbit_nvcc_root}")
  endif()
  # --- cuBLAS (and the runtime) from the toolkit ---
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND AND TARGET CUDA::cublas AND TARGET CUDA::cublasLt
     AND TARGET CUDA::cudart)
    get_target_property(_lowbit_cublas_loc CUDA::cublas IMPORTED_LOCATION)
    list(APPEND _lowbit_found "cuBLAS ${CUDAToolkit_VERSION} (${_lowbit_cublas_loc})")
  else()
    list(APPEND _lowbit_missing
         "cuBLAS (find_package(CUDAToolkit) under ${CUDAToolkit_ROOT} gave no CUDA::cublas)")
  endif()
  foreach(_lowbit_dir IN LISTS CUDAToolkit_INCLUDE_DIRS CUDAToolkit_LIBRARY_DIR)
    get_filename_component(_lowbit_dir "${_lowbit_dir}" DIRECTORY)
    list(APPEND _lowbit_toolkit_roots "${_lowbit_dir}")
  endforeach()
  list(APPEND _lowbit_toolkit_roots "${_lowbit_nvcc_root}" "${CUDAToolkit_TARGET_DIR}")
  list(REMOVE_ITEM _lowbit_toolkit_roots "")
  list(REMOVE_DUPLICATES _lowbit_toolkit_roots)
else()
  list(APPEND _lowbit_missing
       "nvcc (check_language(CUDA) found no working compiler, set CUDACXX or put nvcc on PATH)")
endif()

# --- cuDNN and NCCL -------------------------------------------------------------------------
_lowbit_python_site_dirs(_lowbit_sites)

foreach(_lowbit_lib IN ITEMS CUDNN NCCL)
  string(TOLOWER "${_lowbit_lib}" _lowbit_name)
  set(_lowbit_roots "")
  foreach(_lowbit_hint IN ITEMS "${LOWBIT_${_lowbit_lib}_ROOT}" "$ENV{${_lowbit_lib}_ROOT}")
    if(_lowbit_hint)
      file(TO_CMAKE_PATH "${_lowbit_hint}" _lowbit_hint)
      # A site-packages dir works as a hint too.
      list(APPEND _lowbit_roots "${_lowbit_hint}" "${_lowbit_hint}/nvidia/${_lowbit_name}")
    endif()
  endforeach()
  list(APPEND _lowbit_roots ${_lowbit_toolkit_roots})
  set(_lowbit_wheel_roots "")
  foreach(_lowbit_site IN LISTS _lowbit_sites)
    list(APPEND _lowbit_wheel_roots "${_lowbit_site}/nvidia/${_lowbit_name}")
  endforeach()
  set(_lowbit_searched ${_lowbit_roots} CMAKE_PREFIX_PATH /usr/local /usr ${_lowbit_wheel_roots})
  list(JOIN _lowbit_searched ", " _lowbit_searched)

  if(_lowbit_lib STREQUAL "CUDNN")
    _lowbit_find_cuda_lib(CUDNN HEADER cudnn.h NAMES cudnn libcudnn.so.9
                          ROOTS ${_lowbit_roots} PATHS ${_lowbit_wheel_roots})
    _lowbit_header_version(LOWBIT_CUDNN_VERSION
                           "${LOWBIT_CUDNN_INCLUDE_DIR}/cudnn_version.h" "CUDNN_")
    set(_lowbit_label "cuDNN")
    set(_lowbit_need_major 9)
  else()
    _lowbit_find_cuda_lib(NCCL HEADER nccl.h NAMES nccl libnccl.so.2
                          ROOTS ${_lowbit_roots} PATHS ${_lowbit_wheel_roots})
    _lowbit_header_version(LOWBIT_NCCL_VERSION "${LOWBIT_NCCL_INCLUDE_DIR}/nccl.h" "NCCL_")
    set(_lowbit_label "NCCL")
    set(_lowbit_need_major 2)
  endif()

  set(_lowbit_inc "${LOWBIT_${_lowbit_lib}_INCLUDE_DIR}")
  set(_lowbit_so "${LOWBIT_${_lowbit_lib}_LIBRARY}")
  set(_lowbit_ver "${LOWBIT_${_lowbit_lib}_VERSION}")
  set(_lowbit_why "")
  if(NOT _lowbit_inc)
    set(_lowbit_why "no ${_lowbit_name}.h under ${_lowbit_searched}")
  elseif(NOT _lowbit_so)
    set(_lowbit_why "${_lowbit_name}.h in ${_lowbit_inc} but no lib${_lowbit_name}.so* near it "
                    "or under ${_lowbit_searched}")
  elseif(NOT _lowbit_ver MATCHES "^${_lowbit_need_major}\\.")
    set(_lowbit_why "need version ${_lowbit_need_major}.x, found '${_lowbit_ver}' in ${_lowbit_inc}")
  endif()
  if(_lowbit_why)
    # Joined by hand: a ';' inside would split the list entry.
    string(REPLACE ";" "" _lowbit_why "${_lowbit_why}")
    list(APPEND _lowbit_missing
         "${_lowbit_label} (${_lowbit_why}, set LOWBIT_${_lowbit_lib}_ROOT to its prefix)")
  else()
    list(APPEND _lowbit_found "${_lowbit_label} ${_lowbit_ver} (${_lowbit_inc}, ${_lowbit_so})")
    _lowbit_wheel_cuda_major(_lowbit_wheel_major "${_lowbit_so}" "${_lowbit_name}")
    if(_lowbit_wheel_major AND CUDAToolkit_VERSION_MAJOR
       AND NOT _lowbit_wheel_major STREQUAL CUDAToolkit_VERSION_MAJOR)
      message(WARNING "lowbit: ${_lowbit_label} comes from the pip wheel for CUDA "
                      "${_lowbit_wheel_major} (${_lowbit_so}) but the toolkit is CUDA "
                      "${CUDAToolkit_VERSION}; install nvidia-${_lowbit_name}-cu"
                      "${CUDAToolkit_VERSION_MAJOR} or set LOWBIT_${_lowbit_lib}_ROOT.")
    endif()
  endif()
endforeach()

list(JOIN _lowbit_found "; " _lowbit_found_text)
list(JOIN _lowbit_missing "; " _lowbit_missing_text)
if(_lowbit_missing)
  if(_lowbit_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "lowbit: LOWBIT_CUDA=ON but the CUDA backend cannot be built.\n"
                        "  missing: ${_lowbit_missing_text}\n"
                        "  found: ${_lowbit_found_text}\n"
                        "Use LOWBIT_CUDA=AUTO or OFF to build CPU-only.")
  endif()
  set(LOWBIT_WITH_CUDA OFF)
  if(NOT _lowbit_found_text)
    set(_lowbit_found_text "nothing")
  endif()
  message(STATUS "lowbit: CUDA backend OFF (LOWBIT_CUDA=AUTO), building CPU-only. "
                 "Missing: ${_lowbit_missing_text}. Found: ${_lowbit_found_text}.")
  foreach(_lowbit_var IN ITEMS _lowbit_cuda_mode _lowbit_found _lowbit_missing
                               _lowbit_found_text _lowbit_missing_text _lowbit_sites
                               _lowbit_toolkit_roots)
    unset(${_lowbit_var})
  endforeach()
  return()
endif()

# --- everything found: set up the CUDA language ----------------------------------------------
set(LOWBIT_WITH_CUDA ON)
message(STATUS "lowbit: CUDA backend ON. Found: ${_lowbit_found_text}.")

# Architectures: before enable_language(CUDA), which would otherwise pick nvcc's default.
if(DEFINED CMAKE_CUDA_ARCHITECTURES)
  message(STATUS "lowbit: CUDA architectures ${CMAKE_CUDA_ARCHITECTURES} "
                 "(from CMAKE_CUDA_ARCHITECTURES)")
elseif(DEFINED ENV{CUDAARCHS})
  message(STATUS "lowbit: CUDA architectures $ENV{CUDAARCHS} (from the environment, CUDAARCHS)")
else()
  set(_lowbit_gpus "")
  find_program(LOWBIT_NVIDIA_SMI nvidia-smi)
  mark_as_advanced(LOWBIT_NVIDIA_SMI)
  if(LOWBIT_NVIDIA_SMI)
    execute_process(COMMAND "${LOWBIT_NVIDIA_SMI}" -L OUTPUT_VARIABLE _lowbit_smi
                    RESULT_VARIABLE _lowbit_smi_rc ERROR_QUIET TIMEOUT 30)
    if(_lowbit_smi_rc EQUAL 0)
      string(REGEX MATCHALL "GPU [0-9]+: [^\n(]*" _lowbit_gpus "${_lowbit_smi}")
    endif()
  endif()
  if(_lowbit_gpus)
    list(GET _lowbit_gpus 0 _lowbit_gpu0)
    string(STRIP "${_lowbit_gpu0}" _lowbit_gpu0)
    set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
    message(STATUS "lowbit: CUDA architectures 80-real;90-real;90-virtual (nvidia-smi lists "
                   "${_lowbit_gpu0}: sm_80 and sm_90 code plus sm_90 PTX for newer GPUs; "
                   "set CMAKE_CUDA_ARCHITECTURES to override)")
  else()
    set(CMAKE_CUDA_ARCHITECTURES "80-real")
    message(STATUS "lowbit: CUDA architectures 80-real (no GPU listed by nvidia-smi, so one "
                   "architecture for the quickest build; set CMAKE_CUDA_ARCHITECTURES to override)")
  endif()
endif()

enable_language(CUDA)

set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_EXTENSIONS OFF)
set(CMAKE_CUDA_SEPARABLE_COMPILATION OFF)
# --fmad=false: no multiply-add contraction in lowbit's kernels, as -ffp-contract=off on the CPU
# (CMakeLists.txt), so the element math shared as __host__ __device__ functions (BN affine and
# input gradient, loss, optimizer steps, fake quantization) rounds the same on both backends.
# cuDNN and cuBLAS are not affected. The kernels are memory-bound, so the FMA unit is not missed.
add_compile_options("$<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>"
                    "$<$<COMPILE_LANGUAGE:CUDA>:--extended-lambda>"
                    "$<$<COMPILE_LANGUAGE:CUDA>:--fmad=false>"
                    "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>")

# CUDA 13 moved Thrust/CUB/libcu++ to include/cccl; FindCUDAToolkit of older CMake misses it.
foreach(_lowbit_dir IN LISTS CUDAToolkit_INCLUDE_DIRS)
  if(IS_DIRECTORY "${_lowbit_dir}/cccl")
    get_target_property(_lowbit_incs CUDA::cudart INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT "${_lowbit_dir}/cccl" IN_LIST _lowbit_incs)
      set_property(TARGET CUDA::cudart APPEND PROPERTY
                   INTERFACE_INCLUDE_DIRECTORIES "${_lowbit_dir}/cccl")
    endif()
  endif()
endforeach()

foreach(_lowbit_lib IN ITEMS CUDNN NCCL)
  string(TOLOWER "${_lowbit_lib}" _lowbit_name)
  if(NOT TARGET lowbit::${_lowbit_name})
    add_library(lowbit::${_lowbit_name} INTERFACE IMPORTED GLOBAL)
    set_target_properties(lowbit::${_lowbit_name} PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${LOWBIT_${_lowbit_lib}_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "${LOWBIT_${_lowbit_lib}_LIBRARY};CUDA::cudart")
  endif()
endforeach()

foreach(_lowbit_var IN ITEMS _lowbit_cuda_mode _lowbit_found _lowbit_missing _lowbit_found_text
                             _lowbit_missing_text _lowbit_sites _lowbit_toolkit_roots
                             _lowbit_gpus _lowbit_gpu0 _lowbit_smi _lowbit_smi_rc _lowbit_incs)
  unset(${_lowbit_var})
endforeach()
