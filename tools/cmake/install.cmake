# install.cmake - what `cmake --install build [--prefix X]` puts where, included by the top-level
# CMakeLists.txt. Everything installed is relocatable: the pkg-config files find the prefix from
# their own place (${pcfiledir}), the CMake package from its own (CMAKE_CURRENT_LIST_DIR), and the
# systemd user units are written at install time with the prefix actually installed to.
#
#   bin/tokenledger
#   include/tokenledger.h
#   LIBDIR/libtokenledger.so.0.x.y, .so.0, .so, libtokenledger.a
#   LIBDIR/pkgconfig/tokenledger.pc (shared), tokenledger-static.pc (the archive)
#   LIBDIR/cmake/tokenledger/ (tokenledgerConfig.cmake: tokenledger::tokenledger, ::tokenledger_static)
#   share/man/man1/tokenledger.1, share/bash-completion/completions/tokenledger
#   TL_SYSTEMD_USER_UNIT_DIR/tokenledger-*.service
include(CMakePackageConfigHelpers)

install(TARGETS tokenledger_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS tokenledger EXPORT tokenledgerTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS tokenledger_static EXPORT tokenledgerStaticTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES src/include/tokenledger.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# pkg-config. prefix is the .pc file's directory walked back up to the installation prefix, so the
# files stay true wherever the tree is installed or moved. An absolute LIBDIR or INCLUDEDIR (given
# by hand) cannot move with the prefix and is written as it is.
file(RELATIVE_PATH TL_PC_UP "${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig" "${CMAKE_INSTALL_PREFIX}")
string(REGEX REPLACE "/$" "" TL_PC_UP "${TL_PC_UP}")
set(TL_PC_PREFIX "\${pcfiledir}/${TL_PC_UP}")
foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
    set(TL_PC_${dir} "${CMAKE_INSTALL_${dir}}")
  else()
    set(TL_PC_${dir} "\${prefix}/${CMAKE_INSTALL_${dir}}")
  endif()
endforeach()
configure_file(tools/cmake/tokenledger.pc.in ${CMAKE_BINARY_DIR}/tokenledger.pc @ONLY)
configure_file(tools/cmake/tokenledger-static.pc.in ${CMAKE_BINARY_DIR}/tokenledger-static.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/tokenledger.pc ${CMAKE_BINARY_DIR}/tokenledger-static.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# CMake package: find_package(tokenledger [0.1] [COMPONENTS shared static]).
set(TL_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/tokenledger)
install(EXPORT tokenledgerTargets NAMESPACE tokenledger:: DESTINATION ${TL_CMAKE_DIR})
install(EXPORT tokenledgerStaticTargets NAMESPACE tokenledger:: DESTINATION ${TL_CMAKE_DIR})
configure_package_config_file(tools/cmake/tokenledgerConfig.cmake.in ${CMAKE_BINARY_DIR}/tokenledgerConfig.cmake
  INSTALL_DESTINATION ${TL_CMAKE_DIR})
# Before 1.0 a minor version may break the interface, as the soname's major 0 says.
write_basic_package_version_file(${CMAKE_BINARY_DIR}/tokenledgerConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/tokenledgerConfig.cmake ${CMAKE_BINARY_DIR}/tokenledgerConfigVersion.cmake
  DESTINATION ${TL_CMAKE_DIR})

# The manual page and bash completion.
configure_file(docs/man/tokenledger.1.in ${CMAKE_BINARY_DIR}/tokenledger.1 @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/tokenledger.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES tools/completion/tokenledger.bash DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions
  RENAME tokenledger)

# systemd user units. Where they go is decided at install time from the prefix actually installed
# to: below /usr and /usr/local, lib/systemd/user (systemd's pkg-config systemduserunitdir when it
# lies below the prefix); below any other prefix (a home prefix such as ~/.local), share/systemd/user,
# which the user manager reads as $XDG_DATA_HOME/systemd/user. -DTL_SYSTEMD_USER_UNIT_DIR=DIR
# (relative to the prefix, or absolute) overrides that. Each docs/*.service.in is a template whose
# ExecStart names @CMAKE_INSTALL_FULL_BINDIR@, also filled at install time, so
# `cmake --install build --prefix X` writes X's bin directory into it.
set(TL_SYSTEMD_USER_UNIT_DIR "" CACHE STRING "Where systemd user units are installed (default: see install.cmake)")
pkg_get_variable(TL_SYSTEMD_PC_USERUNITDIR systemd systemduserunitdir)
file(GLOB TL_UNIT_TEMPLATES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/docs/*.service.in)
install(CODE "
  set(unitdir \"${TL_SYSTEMD_USER_UNIT_DIR}\")
  if(NOT unitdir)
    if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\" OR CMAKE_INSTALL_PREFIX STREQUAL \"/usr/local\")
      set(unitdir lib/systemd/user)
      if(IS_ABSOLUTE \"${TL_SYSTEMD_PC_USERUNITDIR}\")
        file(RELATIVE_PATH rel \"\${CMAKE_INSTALL_PREFIX}\" \"${TL_SYSTEMD_PC_USERUNITDIR}\")
        if(NOT rel MATCHES \"^[.][.]/\")
          set(unitdir \"\${rel}\")
        endif()
      endif()
    else()
      set(unitdir \"${CMAKE_INSTALL_DATADIR}/systemd/user\")
    endif()
  endif()
  if(NOT IS_ABSOLUTE \"\${unitdir}\")
    set(unitdir \"\${CMAKE_INSTALL_PREFIX}/\${unitdir}\")
  endif()
  if(IS_ABSOLUTE \"${CMAKE_INSTALL_BINDIR}\")
    set(CMAKE_INSTALL_FULL_BINDIR \"${CMAKE_INSTALL_BINDIR}\")
  else()
    set(CMAKE_INSTALL_FULL_BINDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}\")
  endif()
  foreach(tpl ${TL_UNIT_TEMPLATES})
    get_filename_component(unit \"\${tpl}\" NAME_WLE)
    configure_file(\"\${tpl}\" \"${CMAKE_BINARY_DIR}/units/\${unit}\" @ONLY)
    file(INSTALL \"${CMAKE_BINARY_DIR}/units/\${unit}\" DESTINATION \"\${unitdir}\")
  endforeach()")
