#pragma once
// The flat parameter store: one value vector and one gradient vector of identical layout, with
// named slots (offset, shape). Layers register their slots at construction and later get
// Eigen::Map views; optimizers and checkpoints are flat loops over the slots.
//
// Names and shapes follow the Hugging Face ReformerModelWithLMHead state dict (docs/DESIGN.md 2): a
// weight of PyTorch shape [out, in] is a row-major out x in matrix view. A slot of rank >= 2 is
// viewed as shape[0] x (product of the remaining extents); a rank-1 slot as an n x 1 matrix.
#include "reformer/core/checked_size.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <cstddef>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace reformer {

/// One named tensor inside the flat store.
struct ParamSlot {
  std::string name;
  std::vector<Index> shape;  // PyTorch shape, e.g. {out, in}
  Index offset = 0;          // first element in the flat vectors
  Index size = 0;            // number of elements (product of shape)

  Index rows() const { return shape.empty() ? 1 : shape[0]; }
  Index cols() const { return rows() == 0 ? 0 : size / rows(); }
};

/// Handle of a slot inside a Parameters store (its position in registration order).
using SlotId = Index;

template <class S>
class Parameters {
 public:
  using Scalar = S;

  /// At most this many scalars in one store (2^40: 4 TiB of floats), so that element counts
  /// and offsets never overflow.
  static constexpr Index kMaxScalars = Index{1} << 40;

  /// Registers a zero-initialised tensor; returns its slot id. Names must be unique, every
  /// extent positive and the store's total size at most kMaxScalars (InvalidArgument naming the
  /// tensor otherwise, checked before anything is allocated). Adding invalidates previously
  /// created maps (the vectors may reallocate).
  SlotId add(const std::string& name, std::vector<Index> shape) {
    REFORMER_REQUIRE(!name.empty(), InvalidArgument, "Parameters::add", "name must not be empty");
    REFORMER_REQUIRE(by_name_.count(name) == 0, InvalidArgument, "Parameters::add", "name '", name,
                     "' is already registered");
    REFORMER_REQUIRE(!shape.empty(), InvalidArgument, "Parameters::add", "shape of '", name,
                     "' must have at least one extent");
    for (Index e : shape) {
      REFORMER_REQUIRE(e > 0, InvalidArgument, "Parameters::add", "shape of '", name,
                       "' has extent ", e, ", extents must be positive");
    }
    const Index size =
        size_product("Parameters::add", "shape of '" + name + "'", shape, kMaxScalars - total_);
    ParamSlot slot{name, std::move(shape), total_, size};
    total_ += size;
    values_.conservativeResize(total_);
    grads_.conservativeResize(total_);
    values_.segment(slot.offset, size).setZero();
    grads_.segment(slot.offset, size).setZero();
    const SlotId id = static_cast<SlotId>(slots_.size());
    by_name_.emplace(slot.name, id);
    slots_.push_back(std::move(slot));
    return id;
  }

  Index num_slots() const { return static_cast<Index>(slots_.size()); }
  const std::vector<ParamSlot>& slots() const { return slots_; }
  const ParamSlot& slot(SlotId id) const {
    REFORMER_REQUIRE(id >= 0 && id < num_slots(), InvalidArgument, "Parameters::slot", "id ", id,
                     " out of range [0, ", num_slots(), ")");
    return slots_[static_cast<std::size_t>(id)];
  }

  /// Slot id of `name`, or nullopt.
  std::optional<SlotId> find(const std::string& name) const {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return std::nullopt;
    return it->second;
  }
  /// Slot id of `name`; throws InvalidArgument naming it when absent.
  SlotId id_of(const std::string& name) const {
    auto id = find(name);
    REFORMER_REQUIRE(id.has_value(), InvalidArgument, "Parameters::id_of", "no parameter named '",
                     name, "'");
    return *id;
  }

  /// Total number of scalars.
  Index size() const { return total_; }

  Vector<S>& values() { return values_; }
  const Vector<S>& values() const { return values_; }
  Vector<S>& grads() { return grads_; }
  const Vector<S>& grads() const { return grads_; }

  /// Matrix views (row-major, see the header comment).
  WeightMap<S> value(SlotId id) { return view<WeightMap<S>>(values_, id); }
  ConstWeightMap<S> value(SlotId id) const { return view<ConstWeightMap<S>>(values_, id); }
  WeightMap<S> grad(SlotId id) { return view<WeightMap<S>>(grads_, id); }
  ConstWeightMap<S> grad(SlotId id) const { return view<ConstWeightMap<S>>(grads_, id); }

  /// Flat vector views of one slot.
  VectorMap<S> value_vector(SlotId id) { return view<VectorMap<S>>(values_, id); }
  ConstVectorMap<S> value_vector(SlotId id) const { return view<ConstVectorMap<S>>(values_, id); }
  VectorMap<S> grad_vector(SlotId id) { return view<VectorMap<S>>(grads_, id); }
  ConstVectorMap<S> grad_vector(SlotId id) const { return view<ConstVectorMap<S>>(grads_, id); }

  void zero_grad() { grads_.setZero(); }

 private:
  /// Slot `id` of `store` (values_ or grads_) as a `Map`: a rows x cols matrix or a flat vector.
  template <class Map, class Store>
  Map view(Store& store, SlotId id) const {
    const auto& s = slot(id);
    if constexpr (Map::IsVectorAtCompileTime) {
      return Map(store.data() + s.offset, s.size);
    } else {
      return Map(store.data() + s.offset, s.rows(), s.cols());
    }
  }

  std::vector<ParamSlot> slots_;
  std::unordered_map<std::string, SlotId> by_name_;
  Vector<S> values_;
  Vector<S> grads_;
  Index total_ = 0;
};

}  // namespace reformer
