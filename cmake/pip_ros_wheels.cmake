# Build fix for the pip-installed ROS 2 wheels only (passed by scripts/setup.sh as
# CMAKE_PROJECT_INCLUDE; a stock ROS install never reads this file).
# The wheels' exported targets name the include dir of the machine they were built on
# (/opt/python/...), which does not exist here and makes CMake refuse to generate.
# At the end of configuration, drop include dirs that do not exist from imported targets.
function(_ovseg_drop_missing_imported_includes)
  get_directory_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_kept "")
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "^\\$<" OR EXISTS "${_dir}")
        list(APPEND _kept "${_dir}")
      endif()
    endforeach()
    set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _ovseg_drop_missing_imported_includes)
