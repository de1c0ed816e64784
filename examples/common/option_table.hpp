#pragma once
// Each command-line option of an example program is declared once, as a row of an
// OptionTable<Settings>: its CLI11 names, help text, group, the Settings member it sets, an
// optional validator, and its scope. From the table come
//   - the CLI11 options (add_to; --help shows every default),
//   - the run settings as JSON (to_json, saved in checkpoints) and back (restore, on --resume),
//   - the checks that run options are not given where the checkpoint decides (refuse_given).
// The default of an option is the initial value of its Settings member.
#include "common/allocator.hpp"
#include "common/cli.hpp"
#include "reformer/io/checkpoint.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace reformer::examples {

/// What an option belongs to.
enum class OptionScope {
  kInvocation,  ///< this invocation only (threads, output, generation): not saved
  kRun,         ///< the run's identity: saved in checkpoints, fixed when resuming
  kExtend  ///< saved in checkpoints; a value given with --resume replaces it (--steps, --threads)
};

template <class Settings>
class OptionTable {
 public:
  /// One option.
  struct Row {
    std::string name;  ///< "--length" or, for a positional, "file" (as CLI::App::count takes)
    std::string key;   ///< its key in the run-settings JSON ("length", "d_model")
    OptionScope scope = OptionScope::kInvocation;
    std::function<void(CLI::App&, Settings&)> add;
    std::function<void(const Settings&, nlohmann::json&)> save;
    std::function<void(const io::Checkpoint&, Settings&)> load;
  };

  /// The options added next are listed under `name` in --help ("" = CLI11's default group).
  OptionTable& group(std::string name) {
    group_ = std::move(name);
    return *this;
  }

  /// An option `flags` ("--length,-T", or "file" for a positional) setting `member`.
  template <class T, class Base>
  OptionTable& option(const std::string& flags, T Base::*member, std::string help,
                      OptionScope scope, std::optional<CLI::Validator> check = std::nullopt) {
    T Settings::*m = member;
    const std::string group = group_;
    return add_row(flags, scope, m, [=](CLI::App& app, Settings& s) {
      CLI::Option* o = app.add_option(flags, s.*m, help);
      if constexpr (std::is_floating_point_v<T>) o->check(finite_number());
      if constexpr (std::is_unsigned_v<T> && !std::is_same_v<T, bool>) o->check(unsigned_integer());
      if (check) o->check(*check);
      if (!group.empty()) o->group(group);
    });
  }

  /// A flag `flags` ("--paper", or "!--no-table2" to clear it) setting the bool `member`.
  template <class Base>
  OptionTable& flag(const std::string& flags, bool Base::*member, std::string help,
                    OptionScope scope) {
    bool Settings::*m = member;
    const std::string group = group_;
    return add_row(flags, scope, m, [=](CLI::App& app, Settings& s) {
      CLI::Option* o = app.add_flag(flags, s.*m, help);
      if (!group.empty()) o->group(group);
    });
  }

  /// Adds every option to `app`, bound to the members of `s` (which must outlive parsing).
  void add_to(CLI::App& app, Settings& s) const {
    show_defaults(app);
    for (const Row& r : rows_) r.add(app, s);
  }

  /// The saved (run and extend) settings as a JSON object.
  nlohmann::json to_json(const Settings& s) const {
    nlohmann::json j = nlohmann::json::object();
    for (const Row& r : rows_) {
      if (r.scope != OptionScope::kInvocation) r.save(s, j);
    }
    return j;
  }

  /// Resuming: every saved setting from `ck`'s user JSON, except the kExtend options given on
  /// the command line (those keep their value) or absent from the file (a checkpoint written
  /// before the option was saved). IoError naming the file and a missing run setting.
  void restore(const io::Checkpoint& ck, const CLI::App& app, Settings& s) const {
    for (const Row& r : rows_) {
      if (r.scope == OptionScope::kRun ||
          (r.scope == OptionScope::kExtend && app.count(r.name) == 0 && ck.user().contains(r.key)))
        r.load(ck, s);
    }
  }

  /// A usage error "<option>: <message>" for the first saved option given on the command line
  /// whose scope is in `scopes` and whose name is not in `except`.
  void refuse_given(const CLI::App& app, const std::set<OptionScope>& scopes,
                    const std::string& message, const std::set<std::string>& except = {}) const {
    for (const Row& r : rows_) {
      if (scopes.count(r.scope) && !except.count(r.name))
        require_option(app.count(r.name) == 0, r.name, message);
    }
  }

 private:
  template <class T, class AddFn>
  OptionTable& add_row(const std::string& flags, OptionScope scope, T Settings::*m, AddFn add) {
    Row r;
    r.name = long_name(flags);
    r.key = json_key(r.name);
    r.scope = scope;
    r.add = add;
    const std::string key = r.key;
    r.save = [key, m](const Settings& s, nlohmann::json& j) { j[key] = s.*m; };
    r.load = [key, m](const io::Checkpoint& ck, Settings& s) { s.*m = ck.user_value<T>(key); };
    rows_.push_back(std::move(r));
    return *this;
  }

  /// "--length,-T" -> "--length"; "!--no-table2" -> "--no-table2"; "file" -> "file".
  static std::string long_name(const std::string& flags) {
    std::string first = flags.substr(0, flags.find(','));
    if (!first.empty() && first[0] == '!') first.erase(0, 1);
    return first;
  }

  /// "--d-model" -> "d_model".
  static std::string json_key(std::string name) {
    name.erase(0, name.find_first_not_of('-'));
    for (char& c : name) {
      if (c == '-') c = '_';
    }
    return name;
  }

  std::vector<Row> rows_;
  std::string group_;
};

/// The option table of a program, filled by `declare` on first use and kept for the program's
/// life (one table per Settings type).
template <class Settings>
const OptionTable<Settings>& declared_once(void (*declare)(OptionTable<Settings>&)) {
  static const OptionTable<Settings> table = [declare] {
    OptionTable<Settings> t;
    declare(t);
    return t;
  }();
  return table;
}

/// The body of main() for a program whose options are `table`: parses the command line into a
/// Settings and returns `run(app, settings)` (errors as run_program reports them). Every program
/// also takes `--malloc system|tuned`: the allocator's default policy (the library reuses its
/// own work buffers), or glibc tuned to keep freed memory (keep_freed_memory), for comparison.
template <class Settings, class Run>
int run_with_options(const std::string& name, const std::string& description,
                     const OptionTable<Settings>& table, int argc, char** argv, Run&& run) {
  CLI::App app(description, name);
  Settings settings;
  table.add_to(app, settings);
  std::string malloc_policy = "system";
  app.add_option("--malloc", malloc_policy,
                 "allocator policy: system (default) or tuned (glibc keeps freed memory)")
      ->check(CLI::IsMember({"system", "tuned"}));
  return run_program(app, argc, argv, [&] {
    if (malloc_policy == "tuned") keep_freed_memory();
    return run(app, settings);
  });
}

}  // namespace reformer::examples
