// What a call throws: the message of the c10::Error (what LibTorch users
// catch), or "no error".
#pragma once

#include <c10/util/Exception.h>

#include <string>

template <typename Call>
std::string error_message(Call&& call) {
  try {
    call();
  } catch (const c10::Error& e) {
    return std::string(e.what_without_backtrace());
  }
  return std::string("no error");
}
