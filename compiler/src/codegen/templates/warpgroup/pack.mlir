%{{o}}b0 = arith.truncf {{v0}} : f32 to bf16
%{{o}}b1 = arith.truncf {{v1}} : f32 to bf16
%{{o}}p0 = llvm.insertelement %{{o}}b0, %pair0[%lane0 : i32] : vector<2xbf16>
%{{o}}p = llvm.insertelement %{{o}}b1, %{{o}}p0[%lane1 : i32] : vector<2xbf16>
