/*
 * bcryptprimitives.dll for Wine 8.0 (Debian 12), which has none.
 *
 * The Go runtime (1.22 and later) loads bcryptprimitives.dll at start and
 * calls its ProcessPrng for every random byte it needs; without the DLL
 * every Go program dies before main. This shim exports ProcessPrng and
 * fills the buffer from RtlGenRandom (advapi32's SystemFunction036), which
 * Wine has. For tests under Wine only (testdata/windows/wine-env.sh builds
 * it into the Wine prefix's system32); real Windows (8 and later) has its
 * own bcryptprimitives.dll.
 */
#include <windows.h>

/* RtlGenRandom: exported by advapi32 under this name. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/*
 * ProcessPrng fills data with size cryptographically random bytes. Like
 * Windows' own, it always returns TRUE: should RtlGenRandom ever fail, it
 * terminates the process rather than hand out bytes that are not random.
 */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T size)
{
	while (size > 0) {
		ULONG n = size > 0x40000000 ? 0x40000000 : (ULONG)size;
		if (!SystemFunction036(data, n))
			ExitProcess(3);
		data += n;
		size -= n;
	}
	return TRUE;
}
