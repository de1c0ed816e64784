// The double instantiations of REFORMER_INSTANCES_LAYERS (see reformer_instances.hpp).
#define REFORMER_INSTANCES_DEFINE
#include "reformer_instances.hpp"

REFORMER_INSTANCES_LAYERS(, double)
