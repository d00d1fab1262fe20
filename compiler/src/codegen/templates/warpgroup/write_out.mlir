{{checked}}
{{from}}
            %{{o}}v = llvm.load %{{o}}s_ptr {alignment = 16 : i64} : !llvm.ptr<3> -> vector<4xi32>
            scf.if {{cond}} {
              %{{o}}k = arith.constant {{offset}} : index
              %{{o}}g = arith.addi %lg{{i}}, %{{o}}k : index
{{to}}
              llvm.store %{{o}}v, %{{o}}g_ptr {alignment = 16 : i64} : vector<4xi32>, !llvm.ptr<1>
            }
