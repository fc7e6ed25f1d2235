// The only Python-facing C++: an empty module whose import loads the shared
// library, whose static initialisers register the ops under torch.ops.torch_ext.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
