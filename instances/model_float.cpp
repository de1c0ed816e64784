// The float instantiations of REFORMER_INSTANCES_MODEL (see reformer_instances.hpp); the layers
// they call are instantiated in layers_float.cpp.
#define REFORMER_INSTANCES_DEFINE
#include "reformer_instances.hpp"

REFORMER_INSTANCES_LAYERS(extern, float)
REFORMER_INSTANCES_MODEL(, float)
