# Independent SipHash-1-3 (c=1, d=3) written from the SipHash paper, used to compute the
# expected values in src/hash.rs (tests) over the byte encodings documented in the crate docs.
# Run: python3 tests/siphash13_reference.py
import struct
M=(1<<64)-1
def rotl(x,b): return ((x<<b)|(x>>(64-b)))&M
def sip(key, msg, c=1, d=3):
    k0,k1=struct.unpack('<QQ',key)
    v0=k0^0x736f6d6570736575; v1=k1^0x646f72616e646f6d; v2=k0^0x6c7967656e657261; v3=k1^0x7465646279746573
    def rnd():
        nonlocal v0,v1,v2,v3
        v0=(v0+v1)&M; v1=rotl(v1,13); v1^=v0; v0=rotl(v0,32)
        v2=(v2+v3)&M; v3=rotl(v3,16); v3^=v2
        v0=(v0+v3)&M; v3=rotl(v3,21); v3^=v0
        v2=(v2+v1)&M; v1=rotl(v1,17); v1^=v2; v2=rotl(v2,32)
    b=len(msg)
    end=b-(b%8)
    for i in range(0,end,8):
        m=struct.unpack('<Q',msg[i:i+8])[0]
        v3^=m
        for _ in range(c): rnd()
        v0^=m
    last=(b&0xff)<<56
    for i,ch in enumerate(msg[end:]): last|=ch<<(8*i)
    v3^=last
    for _ in range(c): rnd()
    v0^=last
    v2^=0xff
    for _ in range(d): rnd()
    return (v0^v1^v2^v3)&M
if __name__ == "__main__":
    key=bytes(range(16))
    be=lambda fmt,*a: struct.pack('>'+fmt,*a)
    print("token", hex(sip(key, b'\x01'+be('Q',100)+be('I',7))))
    t=b'alpha'
    print("zone", hex(sip(key, b'\x02'+be('Q',len(t))+t+be('I',2))))
    print("capped", hex(sip(key, b'\x04'+be('Q',len(t))+t+be('I',2)+be('I',3))))
    print("salt", hex(sip(key, b'\x03'+be('Q',101))))
    # splitmix64 first two outputs from seed 0
    def sm(s):
        s=(s+0x9e3779b97f4a7c15)&M; z=s
        z=((z^(z>>30))*0xbf58476d1ce4e5b9)&M; z=((z^(z>>27))*0x94d049bb133111eb)&M
        return s, z^(z>>31)
    s,a=sm(0); s,b=sm(s); print("splitmix0", hex(a), hex(b))
