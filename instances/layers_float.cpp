// The float instantiations of REFORMER_INSTANCES_LAYERS (see reformer_instances.hpp).
#define REFORMER_INSTANCES_DEFINE
#include "reformer_instances.hpp"

REFORMER_INSTANCES_LAYERS(, float)

// Every user of the library references the flavour it was compiled with.
extern "C" const int REFORMER_INSTANCES_FLAVOUR = 1;
