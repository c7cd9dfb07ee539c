// The one function of llama.cpp's common.cpp that common's log (log.cpp, in libllama-common-fit) calls:
// whether its lines get colour codes. common.cpp itself is the heaviest file of libllama-common (model
// and context helpers, file system, string utilities) and nothing else of it is used, so this file gives
// the log the same answer: no colours when NO_COLOR is set (no-color.org) or TERM is "dumb", otherwise
// colours when stdout or stderr is a terminal (corral's runner logs to a file: no colours there).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#ifdef _WIN32
#include <io.h>
#define corral_isatty(f) _isatty(_fileno(f))
#else
#include <unistd.h>
#define corral_isatty(f) isatty(fileno(f))
#endif

bool tty_can_use_colors();  // declared in common/common.h, which this file does not need

bool tty_can_use_colors() {
    const char * no_color = std::getenv("NO_COLOR");
    if (no_color != nullptr && no_color[0] != '\0') {
        return false;
    }
    const char * term = std::getenv("TERM");
    if (term != nullptr && std::strcmp(term, "dumb") == 0) {
        return false;
    }
    return corral_isatty(stdout) || corral_isatty(stderr);
}
