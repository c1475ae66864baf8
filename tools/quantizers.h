// `lowbit quantizers [NAME] [--markdown]`: every registered quantizer (or one) with its options,
// their values, defaults and help, from the registry (quant::describe_quantizer). --markdown
// prints the reference section of docs/quantizers.md, which a test compares with the doc.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace lowbit::tools {

extern const char* const kQuantizersHelp;
int run_quantizers(const std::vector<std::string>& args, std::ostream& out);

}  // namespace lowbit::tools
