# corral's additions to llama.cpp's own CMake files, injected with CMAKE_PROJECT_INCLUDE (never by
# editing the pinned tree). Included at every project() call; the guard makes it act once.
include_guard(GLOBAL)

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
