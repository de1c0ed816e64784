#pragma once
// The one JSON reader for text that comes from files (safetensors headers, configs, checkpoint
// metadata): bounded in nesting depth, optionally strict about duplicate keys, and reporting
// errors as short text instead of throwing nlohmann's exceptions.
//
//   auto r = read_json(text);                       // depth <= kMaxJsonDepth
//   if (!r.ok()) raise<IoError>(where, r.error);    // "nesting deeper than 64 levels at byte 64"
//   json_excerpt(r.value)                           // at most ~60 characters for a message
//
// Nesting is checked by a scan of the text before nlohmann parses it, so no deeply nested value
// is ever built, printed or compared (nlohmann's dump() and comparisons recurse). Messages
// never hold more than a bounded excerpt of the input.
//
// Needs nlohmann/json (Debian nlohmann-json3-dev).
#include <nlohmann/json.hpp>

#include <cstddef>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace reformer::io {

/// Deepest nesting of arrays and objects read_json accepts by default.
inline constexpr int kMaxJsonDepth = 64;
/// Longest excerpt of the input or a value that a message quotes.
inline constexpr std::size_t kJsonExcerptChars = 60;

struct JsonReadOptions {
  int max_depth = kMaxJsonDepth;       ///< deeper nesting is an error
  bool reject_duplicate_keys = false;  ///< a key repeated in one object is an error
};

/// A parsed value, or the reason there is none.
struct JsonReadResult {
  nlohmann::json value;
  std::string error;  ///< empty on success
  bool ok() const { return error.empty(); }
};

namespace detail {

/// `text` cut to `max_chars` characters (with "..." when cut).
inline std::string truncated(const std::string& text, std::size_t max_chars = kJsonExcerptChars) {
  return text.size() <= max_chars ? text : text.substr(0, max_chars) + "...";
}

inline void append_excerpt(const nlohmann::json& v, std::string& out, std::size_t max_chars) {
  if (out.size() > max_chars) return;
  if (v.is_object()) {
    out += '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end() && out.size() <= max_chars; ++it) {
      if (!first) out += ',';
      first = false;
      out += nlohmann::json(truncated(it.key(), max_chars)).dump() + ':';
      append_excerpt(it.value(), out, max_chars);
    }
    out += '}';
  } else if (v.is_array()) {
    out += '[';
    bool first = true;
    for (auto it = v.begin(); it != v.end() && out.size() <= max_chars; ++it) {
      if (!first) out += ',';
      first = false;
      append_excerpt(*it, out, max_chars);
    }
    out += ']';
  } else if (v.is_string()) {
    out += nlohmann::json(truncated(v.get_ref<const std::string&>(), max_chars))
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    out += v.dump();
  }
}

/// The first byte offset at which `text` nests arrays/objects deeper than `max_depth`, or -1.
inline long long first_too_deep(const char* begin, const char* end, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char* p = begin; p != end; ++p) {
    const char c = *p;
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return static_cast<long long>(p - begin);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return -1;
}

}  // namespace detail

/// A short rendering of `v` for messages: at most about `max_chars` characters ("..." when cut),
/// whatever the size or depth of `v`.
inline std::string json_excerpt(const nlohmann::json& v,
                                std::size_t max_chars = kJsonExcerptChars) {
  std::string out;
  detail::append_excerpt(v, out, max_chars);
  return detail::truncated(out, max_chars);
}

/// Parses [begin, end) (see the header comment). Never throws for bad input.
inline JsonReadResult read_json(const char* begin, const char* end,
                                const JsonReadOptions& options = {}) {
  JsonReadResult r;
  const long long deep = detail::first_too_deep(begin, end, options.max_depth);
  if (deep >= 0) {
    r.error = "the JSON nests arrays and objects deeper than " + std::to_string(options.max_depth) +
              " levels (at byte " + std::to_string(deep) + ")";
    return r;
  }
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto on_event = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (!options.reject_duplicate_keys) return true;
    if (event == E::object_start) {
      open_objects.emplace_back();
    } else if (event == E::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == E::key && !open_objects.empty() && parsed.is_string()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty())
        duplicate = parsed.get<std::string>();
    }
    return true;
  };
  try {
    r.value = nlohmann::json::parse(begin, end, on_event);
  } catch (const nlohmann::json::exception& e) {
    r.value = nullptr;
    r.error = "not valid JSON: " + detail::truncated(e.what(), 3 * kJsonExcerptChars);
    return r;
  }
  if (!duplicate.empty()) {
    r.value = nullptr;
    r.error = "the JSON repeats the key '" + detail::truncated(duplicate) + "' in one object";
  }
  return r;
}
inline JsonReadResult read_json(const std::string& text, const JsonReadOptions& options = {}) {
  return read_json(text.data(), text.data() + text.size(), options);
}

}  // namespace reformer::io
