# corral's additions to llama.cpp's own CMake files, injected with CMAKE_PROJECT_INCLUDE (never by
# editing the pinned tree). Included at every project() call; the guard makes it act once.
include_guard(GLOBAL)
set(CORRAL_HOOKS_DIR "${CMAKE_CURRENT_LIST_DIR}")  # this folder, for the source files below

# libmtmd compiles each of its ~45 vision/audio graph builders (tools/mtmd/models/*.cpp) as its own
# translation unit, so each one parses the same heavy headers again: ~45 CPU-seconds of a first install
# on a 2-core machine. libllama builds its own models/*.cpp as unity batches of 16; this gives mtmd's
# model files exactly that treatment (its other sources stay separate, as llama.cpp keeps libllama's).
function(corral_mtmd_unity)
    if (NOT TARGET mtmd)
        return()
    endif()
    get_target_property(sources mtmd SOURCES)
    get_target_property(dir mtmd SOURCE_DIR)
    set(separate "")
    foreach(source IN LISTS sources)
        if (NOT source MATCHES "^models/")
            list(APPEND separate "${dir}/${source}")
        endif()
    endforeach()
    set_source_files_properties(${separate} DIRECTORY "${dir}" PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
    set_target_properties(mtmd PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 16)
endfunction()

# Deferred to the end of the top-level directory: every target exists by then.
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL corral_mtmd_unity)

# The cffi module needs one function of libllama-common: common_fit_params (common/fit.cpp, the engine of
# llama-server's --fit; plugins/_llama/memfit.cpp). The whole library (chat templates and parsers, argument
# parsing, downloads, and the cpp-httplib it links) was about a third of a first install's compile on 2
# cores. libllama-common-fit is fit.cpp and the two files it calls into, common's log (log.cpp) and its JSON
# value (json.cpp), compiled as llama-common compiles them, and the one function the log calls from
# common.cpp (corral-common-tty.cpp); llama-server and llama-bench (`--tools`) still link the whole
# libllama-common.
function(corral_fit_library)
    if (NOT TARGET llama-common OR TARGET llama-common-fit)
        return()
    endif()
    get_target_property(dir llama-common SOURCE_DIR)
    add_library(llama-common-fit SHARED "${dir}/fit.cpp" "${dir}/log.cpp" "${dir}/json.cpp"
                "${CORRAL_HOOKS_DIR}/corral-common-tty.cpp")
    get_target_property(options llama-common COMPILE_OPTIONS)
    if (options)
        target_compile_options(llama-common-fit PRIVATE ${options})
    endif()
    get_target_property(version llama-common VERSION)
    get_target_property(soversion llama-common SOVERSION)
    set_target_properties(llama-common-fit PROPERTIES VERSION "${version}" SOVERSION "${soversion}"
                          MACHO_CURRENT_VERSION 0 POSITION_INDEPENDENT_CODE ON)
    find_package(Threads REQUIRED)
    target_include_directories(llama-common-fit PUBLIC "${dir}")
    target_compile_features(llama-common-fit PUBLIC cxx_std_17)
    target_link_libraries(llama-common-fit PUBLIC llama Threads::Threads PRIVATE vendor::nlohmann)
    if (CMAKE_SYSTEM_NAME STREQUAL "Linux")
        # a symbol these files need from the rest of libllama-common fails the build, not the first load
        target_link_options(llama-common-fit PRIVATE "LINKER:--no-undefined")
    endif()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL corral_fit_library)

# With GGML_CPU_ALL_VARIANTS, ggml_add_backend_library makes libggml depend on every ggml-cpu-<variant>
# module, so any build of libllama compiles all fourteen x86 variants. A default install needs two (this
# CPU's and the baseline): with CORRAL_CPU_VARIANTS_ON_DEMAND those dependencies are dropped and
# build_backends.py names the ggml-cpu-<variant> targets it wants, all in this one tree (ggml-base and the
# rest compiled once); corral-cpu-variants builds every variant ggml configured (CORRAL_CPU_VARIANTS=all).
# The modules are loaded at run time (GGML_BACKEND_DL): nothing links them, so nothing else changes.
# CMake keeps a command's builtin under a leading underscore when a function takes its name.
function(add_dependencies target)
    if (NOT (CORRAL_CPU_VARIANTS_ON_DEMAND AND target STREQUAL "ggml"))
        _add_dependencies(${target} ${ARGN})
        return()
    endif()
    set(keep "")
    foreach(dep IN LISTS ARGN)
        if (dep MATCHES "^ggml-cpu-")
            set_property(GLOBAL APPEND PROPERTY CORRAL_CPU_VARIANT_TARGETS "${dep}")
        else()
            list(APPEND keep "${dep}")
        endif()
    endforeach()
    if (keep)
        _add_dependencies(ggml ${keep})
    endif()
endfunction()

function(corral_cpu_variants_target)
    add_custom_target(corral-cpu-variants)
    get_property(variants GLOBAL PROPERTY CORRAL_CPU_VARIANT_TARGETS)
    if (variants)
        _add_dependencies(corral-cpu-variants ${variants})
    endif()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL corral_cpu_variants_target)
