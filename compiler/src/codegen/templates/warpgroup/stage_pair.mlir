{{values}}
{{pair}}
            %{{o}}h = arith.constant {{offset}} : index
            %{{o}}a = arith.addi %stp, %{{o}}h : index
{{pointer}}
            llvm.store %{{o}}p, %{{o}}_ptr {alignment = 4 : i64} : vector<2xbf16>, !llvm.ptr<3>
